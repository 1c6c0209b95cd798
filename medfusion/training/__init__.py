"""Training: the loop both trainers share, the diffusion trainer and the ResNet trainer."""

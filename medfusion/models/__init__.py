"""Networks: the class-conditional UNet denoiser and the discriminative baseline."""

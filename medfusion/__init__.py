"""medfusion: class-conditional diffusion models as medical image classifiers."""

"""The diffusion classifier: the error kernel, aggregation over draws, adaptive compute and uncertainty."""

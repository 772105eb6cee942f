"""Task heads: classification from pooled latents, dense segmentation, retrieval."""

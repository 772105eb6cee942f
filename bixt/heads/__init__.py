"""Task heads: classification from pooled latents, dense image segmentation (linear, Semantic FPN), dense point segmentation, retrieval."""

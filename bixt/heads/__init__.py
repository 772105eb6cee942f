"""Task heads: classification, dense segmentation, retrieval."""

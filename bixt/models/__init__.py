"""Model families; importing registers them with timm."""
from bixt.models.bixt_image import BiXT, checkpoint_filter_fn

__all__ = ["BiXT", "checkpoint_filter_fn"]

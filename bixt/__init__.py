"""bixt: Bi-directional cross-attention transformers (BiXT) for images, point clouds and text."""
from bixt import accel  # noqa: F401  (bixt.accel.optimize)
from bixt.core import BiXTEncoder
from bixt import models as _models  # noqa: F401  (registers the image classifiers with timm)

__all__ = ["BiXTEncoder"]
__version__ = "0.1.0"

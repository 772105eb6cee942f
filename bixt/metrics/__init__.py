"""Evaluators: classification (top-k, per class), part segmentation (ShapeNetPart mIoU), semantic segmentation (confusion matrix, mIoU)."""

"""Task metrics (part segmentation: instance / class mIoU under the ShapeNetPart protocol)."""

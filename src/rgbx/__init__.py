"""rgbx: multi-modal semantic segmentation with any subset of sensors."""

__version__ = "0.1.0"

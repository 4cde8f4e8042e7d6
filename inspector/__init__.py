"""Quality inspector: scores camera frames and traffic rows with GAN anomaly models exported to ONNX.

This package is the runtime. It depends on onnxruntime, numpy, OpenCV and prometheus-client only and
never imports torch; the `training` package builds the models it runs.
"""

__version__ = "0.1.0"

"""Quality inspector: scores camera frames and traffic rows with GAN anomaly models exported to ONNX.

This package is the runtime. It depends on onnxruntime, numpy, OpenCV and prometheus-client only and
never imports torch; the `training` package builds the models it runs.
"""

import os as _os

# OpenCV and its FFmpeg backend print a line to stderr on every failed stream (re)connect; the sources
# log one clear line per outage instead. Users can still raise these levels from the environment.
_os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

__version__ = "0.1.0"

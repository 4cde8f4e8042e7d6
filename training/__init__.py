"""Training side: data, GAN models, the training loop, calibration, evaluation and ONNX export.

Needs the `train` extra (torch). May import `inspector` (preprocessing, card); never the reverse.
"""

"""Shared code of the YOLO-on-Triton deployment: model specs, image decoding, letterbox, box decoding, NMS.

Pure functions (numpy, OpenCV); nothing here imports Triton, so the Triton models, the clients and the tests
all use the same math.
"""
__version__ = "0.1.0"

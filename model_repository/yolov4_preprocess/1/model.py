"""Triton Python model `yolov4_preprocess`: the code is yolo_triton/triton_models/preprocess.py (generated shim)."""
from yolo_triton.triton_models.preprocess import TritonPythonModel  # noqa: F401

"""Triton Python model `yolov4_postprocess`: the code is yolo_triton/triton_models/postprocess.py (generated shim)."""
from yolo_triton.triton_models.postprocess import TritonPythonModel  # noqa: F401

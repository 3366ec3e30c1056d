"""Triton Python model `yolov4`: the code is yolo_triton/triton_models/onnx_detector.py (generated shim)."""
from yolo_triton.triton_models.onnx_detector import TritonPythonModel  # noqa: F401

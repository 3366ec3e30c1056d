"""Encoded bytes → the detector's input tensor on the CPU: decode with limits, fit, RGB, 0..1, NCHW.

The fit is the model's (``boxes.Letterbox``, geometry shared with the GPU path): YOLOv7's letterbox as the official
``detect.py`` (``letterbox(auto=False)``: keep aspect, bilinear resize, pad centred with grey 114), or darknet's own
for the YOLOv4 family (stretched to the network size, or its ``letter_box=1`` letterbox with grey 0.5). The resize
is OpenCV's bilinear, as the official code's.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..boxes import Letterbox, LetterboxMeta
from .decode import DecodeLimits, decode_image


def to_chw_float(image_bgr: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 BGR → 3×H×W float32 RGB in 0..1, the detector's input layout."""
    return np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def fit_image(image_bgr: np.ndarray, target_hw: Tuple[int, int], pad_value: float = 114,
              fit: str = "letterbox", scale_hw: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, LetterboxMeta]:
    """H×W×3 uint8 BGR → (3×H×W float32 RGB 0..1 on the detector's canvas, the way back). The fill is
    ``pad_value`` on the 0..255 scale (darknet's grey 0.5 is 127.5, between two 8-bit levels). ``scale_hw``:
    ``Letterbox``'s (a rectangular canvas with the square's gain)."""
    import cv2  # here, not at the top: the GPU path imports this package and never needs OpenCV

    geometry = Letterbox(image_bgr.shape[:2], tuple(target_hw), fit, scale_hw)
    new_h, new_w = geometry.resized_hw
    if (new_h, new_w) != image_bgr.shape[:2]:
        image_bgr = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, _, left, _ = geometry.padding
    canvas = np.full((3, *target_hw), np.float32(pad_value) / np.float32(255.0), np.float32)
    canvas[:, top : top + new_h, left : left + new_w] = to_chw_float(image_bgr)
    return canvas, geometry.meta


def preprocess_image(data: bytes, target_hw: Tuple[int, int], pad_value: float = 114,
                     limits: DecodeLimits = DecodeLimits(), fit: str = "letterbox") -> Tuple[np.ndarray, LetterboxMeta]:
    """Encoded bytes → (3×H×W float32 tensor, the way back)."""
    return fit_image(decode_image(data, limits), target_hw, pad_value, fit)

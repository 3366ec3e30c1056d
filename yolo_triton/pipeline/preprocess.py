"""Encoded bytes → the detector's input tensor on the CPU: decode with limits, letterbox, RGB, 0..1, NCHW.

Semantics of the official YOLOv7 ``detect.py`` with ``letterbox(auto=False)``: keep aspect, resize with bilinear
interpolation (OpenCV, as the official code), pad centred with grey 114; the geometry is ``boxes.Letterbox``,
shared with the GPU path.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..boxes import Letterbox, LetterboxMeta
from .decode import DecodeLimits, decode_image


def letterbox(image: np.ndarray, target_hw: Tuple[int, int], pad_value: int = 114) -> Tuple[np.ndarray, LetterboxMeta]:
    """Resize keeping aspect ratio and pad to ``target_hw``, centred (official letterbox, auto=False)."""
    import cv2

    geometry = Letterbox(image.shape[:2], target_hw)
    new_h, new_w = geometry.resized_hw
    if (new_h, new_w) != image.shape[:2]:
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom, left, right = geometry.padding
    padded = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return padded, geometry.meta


def to_chw_float(image_bgr: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 BGR → 3×H×W float32 RGB in 0..1, the detector's input layout."""
    return np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def preprocess_image(
    data: bytes, target_hw: Tuple[int, int], pad_value: int = 114, limits: DecodeLimits = DecodeLimits()
) -> Tuple[np.ndarray, LetterboxMeta]:
    """Encoded bytes → (3×H×W float32 tensor, letterbox meta)."""
    padded, meta = letterbox(decode_image(data, limits), target_hw, pad_value)
    return to_chw_float(padded), meta

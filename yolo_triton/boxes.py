"""Letterbox geometry and box maths, written once for the CPU path (NumPy) and the GPU path (torch).

The letterbox is the official YOLOv7 ``letterbox(auto=False)``: keep the aspect ratio, resize until the image
fits, pad centred, an odd padding split the way the official code's ``round(d ± 0.1)`` splits it.
``LetterboxMeta`` is the way back, as the official ``scale_coords`` derives it from the two shapes. The box
functions take NumPy arrays or torch tensors alike (``array_api_compat`` picks the namespace), so both
postprocesses map boxes with the same code; only the resize differs (``cv2`` on the CPU, torch on the GPU).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
from array_api_compat import array_namespace

META_SIZE = 5  # the LETTERBOX_META tensor: original height, original width, gain, pad x, pad y


@dataclasses.dataclass(frozen=True)
class LetterboxMeta:
    """How a letterboxed image maps back to its original: original = (letterboxed - pad) / gain."""

    height: int
    width: int
    gain: float
    pad_x: float
    pad_y: float

    def to_array(self) -> np.ndarray:
        return np.array([self.height, self.width, self.gain, self.pad_x, self.pad_y], dtype=np.float32)

    @classmethod
    def from_array(cls, values) -> "LetterboxMeta":
        h, w, gain, pad_x, pad_y = (float(v) for v in np.asarray(values).reshape(META_SIZE))
        return cls(int(round(h)), int(round(w)), gain, pad_x, pad_y)


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Where an image of ``original_hw`` lands on a letterboxed canvas of ``target_hw``."""

    original_hw: Tuple[int, int]
    target_hw: Tuple[int, int]

    @property
    def gain(self) -> float:
        (h0, w0), (th, tw) = self.original_hw, self.target_hw
        return min(th / h0, tw / w0)

    @property
    def resized_hw(self) -> Tuple[int, int]:
        """The resized image's size; at least one pixel (a 1×3000 strip would otherwise round to height 0)."""
        (h0, w0), gain = self.original_hw, self.gain
        return max(1, int(round(h0 * gain))), max(1, int(round(w0 * gain)))

    @property
    def padding(self) -> Tuple[int, int, int, int]:
        """Rows and columns of fill: top, bottom, left, right."""
        (th, tw), (nh, nw) = self.target_hw, self.resized_hw
        dh, dw = (th - nh) / 2, (tw - nw) / 2
        return int(round(dh - 0.1)), int(round(dh + 0.1)), int(round(dw - 0.1)), int(round(dw + 0.1))

    @property
    def meta(self) -> LetterboxMeta:
        (h0, w0), (th, tw), gain = self.original_hw, self.target_hw, self.gain
        return LetterboxMeta(h0, w0, gain, (tw - w0 * gain) / 2, (th - h0 * gain) / 2)


@dataclasses.dataclass
class Detections:
    """Boxes x1,y1,x2,y2 (float32), scores (float32), class ids (int32) of one image; sorted by score."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))

    def take(self, index) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.classes[index])


def xywh_to_xyxy(boxes):
    """Centre x, y, width, height → corners x1, y1, x2, y2 (rows of an [N, 4] array or tensor)."""
    xp = array_namespace(boxes)
    half = boxes[:, 2:4] / 2
    return xp.concat([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def scale_boxes(boxes, meta: LetterboxMeta):
    """Detector-input pixels → original-image pixels, clipped to the image (official ``scale_coords``)."""
    xp = array_namespace(boxes)
    x = xp.clip((boxes[:, 0::2] - meta.pad_x) / meta.gain, 0, meta.width)
    y = xp.clip((boxes[:, 1::2] - meta.pad_y) / meta.gain, 0, meta.height)
    return xp.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)

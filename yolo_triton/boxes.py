"""How an image is fitted to the detector's input, and box maths: written once for the CPU path (NumPy) and the
GPU path (torch).

Three fits, one per family's own pipeline (``ModelSpec.fit``):

- ``letterbox``: the official YOLOv7 ``letterbox(auto=False)``: keep the aspect ratio, resize until the image fits,
  pad centred, an odd padding split the way the official code's ``round(d ± 0.1)`` splits it; the way back is the
  official ``scale_coords``, from the two shapes. ``detect.py``'s default ``letterbox(auto=True)`` is the same fit
  onto a rectangular canvas (``stride_canvas``: padded only up to a multiple of the stride), the gain still the
  square's (``Letterbox.scale_hw``); ``smallest_bucket`` picks the detector shape that holds such a canvas;
- ``darknet``: darknet's ``letterbox_image`` (a cfg's ``letter_box=1``): the long side to the network's, the short
  one by integer division, placed at integer offsets; the way back is darknet's ``correct_yolo_boxes``;
- ``stretch``: darknet's default (``resize_image`` to the network size): the whole image, aspect ratio not kept, so
  the way back has an x and a y scale.

``LetterboxMeta`` is the way back. The box functions take NumPy arrays or torch tensors alike (``array_api_compat``
picks the namespace), so both postprocesses map boxes with the same code; only the resize differs (``cv2`` on the
CPU, torch on the GPU).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
from array_api_compat import array_namespace

from .specs import FITS
# the LETTERBOX_META tensor: original height, original width, gain x, gain y, pad x, pad y
META_SIZE = 6


@dataclasses.dataclass(frozen=True)
class LetterboxMeta:
    """How a fitted image maps back to its original: original x = (fitted x - pad_x) / gain_x, y likewise."""

    height: int
    width: int
    gain_x: float
    gain_y: float
    pad_x: float
    pad_y: float

    def to_array(self) -> np.ndarray:
        return np.array([self.height, self.width, self.gain_x, self.gain_y, self.pad_x, self.pad_y], dtype=np.float32)

    @classmethod
    def from_array(cls, values) -> "LetterboxMeta":
        h, w, gain_x, gain_y, pad_x, pad_y = (float(v) for v in np.asarray(values).reshape(META_SIZE))
        return cls(int(round(h)), int(round(w)), gain_x, gain_y, pad_x, pad_y)


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Where an image of ``original_hw`` lands on the detector's canvas of ``target_hw``, fitted by ``fit``."""

    original_hw: Tuple[int, int]
    target_hw: Tuple[int, int]
    fit: str = "letterbox"
    # letterbox: the size the gain is taken from, where it is not the canvas (detect.py's auto=True: the square
    # new_shape, while the canvas is only as large as the stride asks); None: the canvas
    scale_hw: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit {self.fit!r}; known: {', '.join(FITS)}")

    @property
    def resized_hw(self) -> Tuple[int, int]:
        """The resized image's size; at least one pixel (a 1×3000 strip would otherwise round to height 0)."""
        (h0, w0), (th, tw) = self.original_hw, self.target_hw
        if self.fit == "stretch":
            return th, tw
        if self.fit == "darknet":  # letterbox_image: integer division, as darknet's C
            return (th, max(1, (w0 * th) // h0)) if tw / w0 >= th / h0 else (max(1, (h0 * tw) // w0), tw)
        sh, sw = self.scale_hw or self.target_hw
        gain = min(sh / h0, sw / w0)
        return max(1, int(round(h0 * gain))), max(1, int(round(w0 * gain)))

    @property
    def padding(self) -> Tuple[int, int, int, int]:
        """Rows and columns of fill: top, bottom, left, right."""
        (th, tw), (nh, nw) = self.target_hw, self.resized_hw
        if self.fit == "darknet":  # embed_image at ((w - new_w) / 2, (h - new_h) / 2), C's integer division
            top, left = (th - nh) // 2, (tw - nw) // 2
            return top, th - nh - top, left, tw - nw - left
        dh, dw = (th - nh) / 2, (tw - nw) / 2
        return int(round(dh - 0.1)), int(round(dh + 0.1)), int(round(dw - 0.1)), int(round(dw + 0.1))

    @property
    def meta(self) -> LetterboxMeta:
        (h0, w0), (th, tw) = self.original_hw, self.target_hw
        if self.fit == "letterbox":  # the official scale_coords: one gain, the padding from the two shapes
            gain = min(th / h0, tw / w0)
            return LetterboxMeta(h0, w0, gain, gain, (tw - w0 * gain) / 2, (th - h0 * gain) / 2)
        # darknet's correct_yolo_boxes: the resized size over the original's, half the difference as the offset
        # (a float: one half pixel off the integer offset the image was embedded at, as darknet has it)
        nh, nw = self.resized_hw
        return LetterboxMeta(h0, w0, nw / w0, nh / h0, (tw - nw) / 2, (th - nh) / 2)


def stride_canvas(original_hw: Tuple[int, int], size_hw: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """The canvas of the official ``letterbox(auto=True)`` (``detect.py``'s default): the image resized to fit
    ``size_hw`` (aspect kept, as ``Letterbox``), each side padded only up to the next multiple of ``stride`` — a
    1920×1080 frame at 640 becomes 384×640 (h×w), not 640×640."""
    nh, nw = Letterbox(tuple(original_hw), tuple(size_hw)).resized_hw
    return nh + (size_hw[0] - nh) % stride, nw + (size_hw[1] - nw) % stride


def smallest_bucket(needed_hw: Tuple[int, int], buckets: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The bucket (h, w) of least area that holds ``needed_hw``; ties: the first given. ValueError if none does."""
    holding = [b for b in buckets if b[0] >= needed_hw[0] and b[1] >= needed_hw[1]]
    if not holding:
        raise ValueError(f"no input shape of {list(buckets)} holds {needed_hw[0]}×{needed_hw[1]}")
    return min(holding, key=lambda b: b[0] * b[1])


def rect_canvas(original_hws: Sequence[Tuple[int, int]], buckets: Sequence[Tuple[int, int]],
                size_hw: Tuple[int, int], stride: int) -> Tuple[int, int]:
    """The detector shape the images of one request share in rectangular inference: the smallest bucket that holds
    every image's ``stride_canvas`` (one image: its own canvas, where that is a bucket)."""
    canvases = [stride_canvas(hw, size_hw, stride) for hw in original_hws]
    return smallest_bucket((max(c[0] for c in canvases), max(c[1] for c in canvases)), buckets)


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
    """Detector-input pixels → original-image pixels, clipped to the image (official ``scale_coords``; darknet's
    ``correct_yolo_boxes`` for its fits)."""
    xp = array_namespace(boxes)
    x = xp.clip((boxes[:, 0::2] - meta.pad_x) / meta.gain_x, 0, meta.width)
    y = xp.clip((boxes[:, 1::2] - meta.pad_y) / meta.gain_y, 0, meta.height)
    return xp.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)

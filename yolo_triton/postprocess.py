"""Detector output → finished detections in original-image pixels.

Semantics of the official YOLOv7 ``non_max_suppression`` + ``scale_coords`` (as ``detect.py`` uses them):
score = objectness × class score, best class only, confidence threshold, per-class NMS, at most ``max_det``
boxes, mapped back through the letterbox and clipped to the image.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional

import cv2
import numpy as np

from .preprocess import LetterboxMeta
from .specs import LAYOUT_RAW_GRID

MAX_NMS_CANDIDATES = 30000  # as the official code: bound NMS work on pathological outputs


@dataclasses.dataclass(frozen=True)
class DetectionParams:
    """Thresholds of one request: defaults from config.pbtxt ``parameters``, overridable per request."""

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300

    KEYS = ("conf_threshold", "iou_threshold", "max_detections")

    def __post_init__(self):
        for key in ("conf_threshold", "iou_threshold"):
            value = getattr(self, key)
            if not (isinstance(value, float) and 0.0 <= value <= 1.0):
                raise ValueError(f"{key} must be a number in [0, 1], got {value!r}")
        if not (isinstance(self.max_detections, int) and 1 <= self.max_detections <= MAX_NMS_CANDIDATES):
            raise ValueError(f"max_detections must be an integer in [1, {MAX_NMS_CANDIDATES}], got {self.max_detections!r}")

    def updated(self, overrides: Optional[Mapping[str, object]]) -> "DetectionParams":
        """These params with ``overrides`` applied; unknown keys and bad values raise ValueError."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.KEYS))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(self.KEYS)}")
        values = dataclasses.asdict(self)
        for key, raw in overrides.items():
            values[key] = _parse_number(key, raw, int if key == "max_detections" else float)
        return DetectionParams(**values)

    @classmethod
    def from_request_json(cls, defaults: "DetectionParams", parameters_json: str) -> "DetectionParams":
        """Triton's ``request.parameters()`` is a JSON object string."""
        return defaults.updated(json.loads(parameters_json) if parameters_json else None)


def _parse_number(key: str, raw: object, kind: type):
    # Triton config parameters arrive as strings; request parameters as JSON numbers or strings.
    if isinstance(raw, bool):
        raise ValueError(f"{key} must be a number, got {raw!r}")
    try:
        value = kind(raw) if kind is float else int(str(raw), 10)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if kind is float and not np.isfinite(value):
        raise ValueError(f"{key} must be finite, got {raw!r}")
    return value


@dataclasses.dataclass
class Detections:
    """Boxes x1,y1,x2,y2 (float32, original pixels), scores (float32), class ids (int32); sorted by score."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32))


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def decode_raw_grid(prediction: np.ndarray, conf_threshold: float) -> Detections:
    """[K, 5+nc] (cx, cy, w, h, obj, cls…) → candidate boxes above the threshold, best class each.

    Boxes stay in detector-input pixels. As the official code: objectness must pass the threshold first, then
    obj × best class score must too.
    """
    if prediction.ndim != 2 or prediction.shape[1] < 6:
        raise ValueError(f"raw grid output must be [K, 5 + classes], got {list(prediction.shape)}")
    candidates = prediction[prediction[:, 4] > conf_threshold]
    class_scores = candidates[:, 5:] * candidates[:, 4:5]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(classes)), classes]
    keep = scores > conf_threshold
    return Detections(
        xywh_to_xyxy(candidates[keep, :4]).astype(np.float32), scores[keep].astype(np.float32), classes[keep].astype(np.int32)
    )


def batched_nms(detections: Detections, iou_threshold: float, max_detections: int) -> Detections:
    """Per-class greedy NMS (OpenCV's ``NMSBoxes`` per class), highest scores first, at most ``max_detections``.

    One call per class rather than ``NMSBoxesBatched``: that one separates classes by shifting boxes by
    ``class × (max coordinate + 1)``, which lets boxes with negative coordinates (they run off the input's
    edge) of neighbouring classes overlap and suppress each other.
    """
    if len(detections) == 0:
        return detections
    order = np.argsort(-detections.scores, kind="stable")[:MAX_NMS_CANDIDATES]
    boxes, scores, classes = detections.boxes[order], detections.scores[order], detections.classes[order]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    kept = [np.zeros(0, np.int64)]
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        chosen = cv2.dnn.NMSBoxes(xywh[members], scores[members], 0.0, iou_threshold)
        kept.append(members[np.asarray(chosen, dtype=np.int64).reshape(-1)])
    keep = np.concatenate(kept)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]
    return Detections(boxes[keep], scores[keep], classes[keep])


def scale_boxes(boxes: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    """Detector-input pixels → original-image pixels, clipped to the image (official ``scale_coords``)."""
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - meta.pad_x) / meta.gain
    out[:, [1, 3]] = (out[:, [1, 3]] - meta.pad_y) / meta.gain
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, meta.width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, meta.height)
    return out


def postprocess(prediction: np.ndarray, meta: LetterboxMeta, params: DetectionParams, layout: str = LAYOUT_RAW_GRID) -> Detections:
    """One image's detector output → its final detections in original pixels."""
    if layout != LAYOUT_RAW_GRID:
        raise ValueError(f"unsupported detector output layout {layout!r}")
    detections = batched_nms(decode_raw_grid(prediction, params.conf_threshold), params.iou_threshold, params.max_detections)
    return Detections(scale_boxes(detections.boxes, meta), detections.scores, detections.classes)

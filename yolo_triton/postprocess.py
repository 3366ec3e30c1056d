"""Detector output → finished detections in original-image pixels.

Semantics of the official YOLOv7 ``non_max_suppression`` + ``scale_coords`` (as ``detect.py`` uses them):
score = objectness × class score, best class only, confidence threshold, per-class NMS, at most ``max_det``
boxes, mapped back through the letterbox and clipped to the image.

Detectors come with one of four output layouts (``specs.LAYOUTS``); each has a decoder here that turns one
image's outputs into candidate boxes in detector-input pixels, and says whether NMS is still to be done:

- raw grid ``[K, 5+nc]`` (ours, official ``export.py --grid``): cx, cy, w, h pixels, objectness, class scores;
- EfficientNMS (``export.py --end2end``): ``num_dets``, ``det_boxes`` x1y1x2y2 pixels, ``det_scores``,
  ``det_classes``; NMS already done by the engine;
- tensorrtx / isarsoft ≤ v1.3 ``prob`` ``[1 + 7·1000, 1, 1]``: count, then rows of cx, cy, w, h pixels,
  det_conf, class_id, class_conf; score = det_conf × class_conf; NMS still needed;
- isarsoft master ``detections`` ``[7·K, 1, 1]``: rows of top-left x, y, w, h normalised to the input,
  det_conf, class_id, class_conf; no threshold, no NMS done.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .preprocess import LetterboxMeta
from . import specs
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
    import cv2  # here, not at the top: the GPU path imports this module and never needs OpenCV

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


def _rows_of_seven(values: np.ndarray, what: str) -> np.ndarray:
    flat = np.asarray(values, np.float32).reshape(-1)
    if flat.size % 7:
        raise ValueError(f"{what}: {flat.size} values is not a whole number of 7-value rows")
    return flat.reshape(-1, 7)


def _scored_rows(rows: np.ndarray, boxes_xyxy: np.ndarray, conf_threshold: float) -> Detections:
    """Rows of (box…, det_conf, class_id, class_conf) → detections scored det_conf × class_conf above the threshold."""
    scores = rows[:, 4] * rows[:, 6]
    keep = scores > conf_threshold
    return Detections(boxes_xyxy[keep].astype(np.float32), scores[keep].astype(np.float32), rows[keep, 5].astype(np.int32))


def decode_tensorrtx_prob(prob: np.ndarray, conf_threshold: float) -> Detections:
    """tensorrtx ``prob``: [0] = number of rows filled, then rows of cx, cy, w, h (input pixels), det_conf,
    class_id, class_conf. Rows past the count are stale memory and ignored; a count past the buffer is clipped."""
    flat = np.asarray(prob, np.float32).reshape(-1)
    if flat.size < 1 or (flat.size - 1) % 7:
        raise ValueError(f"tensorrtx prob output must hold 1 + 7·n values, got {flat.size}")
    count = int(np.clip(np.nan_to_num(flat[0]), 0, (flat.size - 1) // 7))
    rows = flat[1 : 1 + 7 * count].reshape(-1, 7)
    return _scored_rows(rows, xywh_to_xyxy(rows[:, :4]), conf_threshold)


def decode_isarsoft_detections(detections: np.ndarray, conf_threshold: float, input_size) -> Detections:
    """isarsoft master ``detections``: rows of top-left x, y, w, h normalised to the input (0–1), det_conf,
    class_id, class_conf, one per candidate; nothing thresholded or suppressed yet."""
    rows = _rows_of_seven(detections, "isarsoft detections output")
    height, width = input_size
    scale = np.array([width, height, width, height], np.float32)
    x, y, w, h = (rows[:, :4] * scale).T
    return _scored_rows(rows, np.stack([x, y, x + w, y + h], axis=1), conf_threshold)


def decode_efficient_nms(num_dets: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, det_classes: np.ndarray,
                         conf_threshold: float) -> Detections:
    """TensorRT EfficientNMS: the first ``num_dets`` slots are the kept boxes (x1, y1, x2, y2 input pixels), score
    order. The engine's own score threshold was fixed at export; a request may still ask for a higher one."""
    count = int(np.clip(np.asarray(num_dets).reshape(-1)[0], 0, len(det_scores)))
    boxes = np.asarray(det_boxes, np.float32).reshape(-1, 4)[:count]
    scores = np.asarray(det_scores, np.float32).reshape(-1)[:count]
    classes = np.asarray(det_classes).reshape(-1)[:count].astype(np.int32)
    keep = scores > conf_threshold
    return Detections(boxes[keep], scores[keep], classes[keep])


def decode(layout: str, outputs: Mapping[str, np.ndarray], conf_threshold: float, input_size) -> Tuple[Detections, bool]:
    """One image's detector outputs (tensor name → array, names as ``ModelSpec.detector_outputs``) → candidate
    boxes in detector-input pixels, and whether NMS is still to be done."""
    if layout == specs.LAYOUT_RAW_GRID:
        return decode_raw_grid(outputs[specs.DETECTOR_OUTPUT], conf_threshold), True
    if layout == specs.LAYOUT_EFFICIENT_NMS:
        return decode_efficient_nms(outputs["num_dets"], outputs["det_boxes"], outputs["det_scores"], outputs["det_classes"],
                                    conf_threshold), False
    if layout == specs.LAYOUT_TENSORRTX_PROB:
        return decode_tensorrtx_prob(outputs["prob"], conf_threshold), True
    if layout == specs.LAYOUT_ISARSOFT_DETECTIONS:
        return decode_isarsoft_detections(outputs["detections"], conf_threshold, input_size), True
    raise ValueError(f"unsupported detector output layout {layout!r}; known: {', '.join(specs.LAYOUTS)}")


def keep_best(detections: Detections, max_detections: int) -> Detections:
    """Score order, at most ``max_detections`` (for layouts whose NMS ran in the engine)."""
    order = np.argsort(-detections.scores, kind="stable")[:max_detections]
    return Detections(detections.boxes[order], detections.scores[order], detections.classes[order])


def postprocess(outputs: Union[np.ndarray, Mapping[str, np.ndarray]], meta: LetterboxMeta, params: DetectionParams,
                layout: str = LAYOUT_RAW_GRID, input_size: Optional[Tuple[int, int]] = None) -> Detections:
    """One image's detector output(s) → its final detections in original pixels.

    ``outputs``: tensor name → array; a bare array is the raw grid ``output``. ``input_size`` (h, w) of the
    detector is needed by the layouts with normalised boxes.
    """
    if isinstance(outputs, np.ndarray):
        outputs = {specs.DETECTOR_OUTPUT: outputs}
    candidates, needs_nms = decode(layout, outputs, params.conf_threshold, input_size)
    if needs_nms:
        detections = batched_nms(candidates, params.iou_threshold, params.max_detections)
    else:
        detections = keep_best(candidates, params.max_detections)
    return Detections(scale_boxes(detections.boxes, meta), detections.scores, detections.classes)


def check_detector_outputs(layout: str, outputs: Sequence["specs.TensorSpec"], num_classes: int) -> None:
    """Raise ValueError unless ``outputs`` (a detector's declared outputs, batch dim excluded) fit ``layout``.

    Run when the postprocess loads, so that a detector/layout mismatch fails the model load with a message
    instead of every request with an index error.
    """
    by_name = {t.name: t for t in outputs}
    found = ", ".join(f"{t.name} {t.data_type} {list(t.dims)}" for t in outputs) or "none"

    def fail(why: str):
        raise ValueError(f"detector outputs [{found}] do not fit layout {layout!r}: {why}")

    if layout == specs.LAYOUT_EFFICIENT_NMS:
        expected = {"num_dets": "TYPE_INT32", "det_boxes": "TYPE_FP32", "det_scores": "TYPE_FP32", "det_classes": "TYPE_INT32"}
        if set(by_name) != set(expected):
            fail(f"expected exactly {', '.join(expected)}")
        for name, data_type in expected.items():
            if by_name[name].data_type != data_type:
                fail(f"{name} must be {data_type}")
        k = by_name["det_scores"].dims[-1]
        if list(by_name["det_boxes"].dims) not in ([k, 4], [-1, 4]) or list(by_name["det_classes"].dims) not in ([k], [-1]):
            fail("det_boxes must be [k, 4], det_scores and det_classes [k]")
        return
    single = {
        specs.LAYOUT_RAW_GRID: specs.DETECTOR_OUTPUT,
        specs.LAYOUT_TENSORRTX_PROB: "prob",
        specs.LAYOUT_ISARSOFT_DETECTIONS: "detections",
    }
    if layout not in single:
        raise ValueError(f"unsupported detector output layout {layout!r}; known: {', '.join(specs.LAYOUTS)}")
    if list(by_name) != [single[layout]] or outputs[0].data_type != "TYPE_FP32":
        fail(f"expected one FP32 output named {single[layout]!r}")
    dims = [d for d in outputs[0].dims]
    if layout == specs.LAYOUT_RAW_GRID:
        if len(dims) != 2 or dims[1] not in (-1, 5 + num_classes):
            fail(f"expected [K, {5 + num_classes}] (4 box + objectness + {num_classes} classes)")
    else:
        values = int(np.prod(dims)) if all(d > 0 for d in dims) else -1
        if any(d != 1 for d in dims[1:]) or (values > 0 and (values - (layout == specs.LAYOUT_TENSORRTX_PROB)) % 7):
            fail("expected [n, 1, 1] with n = " + ("1 + 7·boxes" if layout == specs.LAYOUT_TENSORRTX_PROB else "7·candidates"))

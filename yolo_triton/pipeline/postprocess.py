"""Detector output → finished detections in original-image pixels, on the CPU.

Semantics of the official YOLOv7 ``non_max_suppression`` + ``scale_coords`` (as ``detect.py`` uses them):
score = objectness × class score, best class only (every passing class with ``multi_label``), confidence
threshold, the request's ``classes`` kept, per-class NMS (one across classes with ``agnostic_nms``), at most
``max_det`` boxes, mapped back through the letterbox and clipped to the image. The detector's outputs are read by their
layout's decoder (``yolo_triton.layouts``); NMS runs here unless the layout says the engine did it.
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple, Union

import numpy as np

from .. import layouts, specs
from ..boxes import Detections, LetterboxMeta, scale_boxes
from ..specs import MAX_NMS_CANDIDATES, DetectionParams


def batched_nms(detections: Detections, iou_threshold: float, max_detections: int, agnostic: bool = False
                ) -> Detections:
    """Per-class greedy NMS (OpenCV's ``NMSBoxes`` per class; one over all classes if ``agnostic``), highest
    scores first, at most ``max_detections``.

    One call per class rather than ``NMSBoxesBatched``: that one separates classes by shifting boxes by
    ``class × (max coordinate + 1)``, which lets boxes with negative coordinates (they run off the input's
    edge) of neighbouring classes overlap and suppress each other.
    """
    if len(detections) == 0:
        return detections
    import cv2  # here, not at the top: importing this module alone needs no OpenCV

    detections = detections.take(np.argsort(-detections.scores, kind="stable")[:MAX_NMS_CANDIDATES])
    boxes, scores, classes = detections.boxes, detections.scores, detections.classes
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    groups = np.zeros_like(classes) if agnostic else classes
    kept = [np.zeros(0, np.int64)]
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        chosen = cv2.dnn.NMSBoxes(xywh[members], scores[members], 0.0, iou_threshold)
        kept.append(members[np.asarray(chosen, dtype=np.int64).reshape(-1)])
    keep = np.concatenate(kept)
    return detections.take(keep[np.argsort(-scores[keep], kind="stable")][:max_detections])


def keep_best(detections: Detections, max_detections: int) -> Detections:
    """Score order, at most ``max_detections`` (for layouts whose NMS ran in the engine)."""
    return detections.take(np.argsort(-detections.scores, kind="stable")[:max_detections])


def postprocess(outputs: Union[np.ndarray, Mapping[str, np.ndarray]], meta: LetterboxMeta, params: DetectionParams,
                layout: str = specs.LAYOUT_RAW_GRID, input_size: Optional[Tuple[int, int]] = None) -> Detections:
    """One image's detector output(s) → its final detections in original pixels.

    ``outputs``: tensor name → array; a bare array is the raw grid ``output``. ``input_size`` (h, w) of the
    detector is needed by the layouts with normalised boxes.
    """
    if isinstance(outputs, np.ndarray):
        outputs = {specs.DETECTOR_OUTPUT: outputs}
    candidates = layouts.decode(layout, outputs, params.conf_threshold, input_size, params.multi_label)
    if params.classes:
        candidates = candidates.take(np.flatnonzero(np.isin(candidates.classes, params.classes)))
    if layouts.get_layout(layout).needs_nms:
        detections = batched_nms(candidates, params.iou_threshold, params.max_detections, params.agnostic_nms)
    else:
        detections = keep_best(candidates, params.max_detections)
    return Detections(scale_boxes(detections.boxes, meta), detections.scores, detections.classes)

"""Detector output layouts: one table of what each kind of detector returns, how that is checked, how it is read.

A layout is a row of ``LAYOUTS``: the outputs a detector of that layout declares (per image, batch dimension
excluded), a check of a detector's declared outputs against them (run when the postprocess loads, and on an
imported ONNX), and a decoder from one image's outputs to candidate boxes in detector-input pixels. Whether NMS
is still to be done is the layout's ``needs_nms``.

- ``raw_grid`` ``output [K, 5 + nc]`` (ours, official ``export.py --grid``): cx, cy, w, h pixels, objectness,
  class scores, sigmoid applied;
- ``efficient_nms`` (``export.py --end2end``, TensorRT's ``EfficientNMS_TRT``): ``num_dets``, ``det_boxes``
  x1y1x2y2 pixels, ``det_scores``, ``det_classes``; NMS done inside the engine;
- ``tensorrtx_prob`` (tensorrtx / isarsoft ≤ v1.3 yolov4) ``prob [1 + 7·1000, 1, 1]``: a count, then rows of cx,
  cy, w, h pixels, det_conf, class_id, class_conf; score = det_conf × class_conf;
- ``isarsoft_detections`` (isarsoft master yolov4) ``detections [7·K, 1, 1]``: rows of top-left x, y, w, h
  normalised to the input, det_conf, class_id, class_conf; nothing thresholded or suppressed yet.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as array_device

from . import specs
from .boxes import Detections, xywh_to_xyxy
from .specs import TensorSpec

TENSORRTX_MAX_BOXES = 1000  # tensorrtx yololayer.h MAX_OUTPUT_BBOX_COUNT


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    needs_nms: bool  # NMS is still to be done (else it ran inside the engine, with options fixed at export)
    per_class_scores: bool  # every class's score per box (so a request may ask for multi_label)
    outputs: Callable[[specs.ModelSpec], Tuple[TensorSpec, ...]]  # what the detector returns per image
    # why a detector's declared outputs (name → TensorSpec) do not fit, given the class count; None if they do
    mismatch: Callable[[Dict[str, TensorSpec], int], Optional[str]]
    # one image's outputs (name → array), conf threshold, detector input (h, w) → candidates in input pixels
    decode: Callable[[Mapping[str, np.ndarray], float, Tuple[int, int]], Detections]


# ------------------------------------------------------------------------------------------------- raw grid

def raw_grid_candidates(predictions, conf, multi_label=None):
    """Raw-grid rows of a batch [N, K, 5 + nc] (NumPy or torch) above the thresholds ``conf`` ([N], the
    predictions' dtype) → (image index, boxes x1y1x2y2, scores, classes) of every candidate, image-major.

    As the official ``non_max_suppression``: objectness must pass the threshold first, then objectness × a class
    score must too; the best class only, or, for the images whose ``multi_label`` ([N] bools on the predictions'
    device; None: no image) is set, every class that passes (one candidate per box and class, in box then class
    order)."""
    xp = array_namespace(predictions)
    image_idx, row_idx = xp.nonzero(predictions[..., 4] > conf[:, None])
    rows = predictions[image_idx, row_idx]
    class_scores = rows[:, 5:] * rows[:, 4:5]
    if multi_label is None:
        scores, classes = xp.max(class_scores, axis=1), xp.argmax(class_scores, axis=1)
        # indices, not a mask: on a GPU each masked selection waits for the GPU, these four would wait four times
        (kept,) = xp.nonzero(scores > conf[image_idx])
        return image_idx[kept], xywh_to_xyxy(rows[kept, :4]), scores[kept], classes[kept]
    passing = class_scores > conf[image_idx][:, None]
    # the images without multi_label keep their best class only
    best = xp.argmax(class_scores, axis=1)
    others = xp.arange(class_scores.shape[1], device=array_device(class_scores))[None, :] != best[:, None]
    passing = passing & ~(~multi_label[image_idx][:, None] & others)
    candidate, classes = xp.nonzero(passing)
    return image_idx[candidate], xywh_to_xyxy(rows[candidate, :4]), class_scores[candidate, classes], classes


def _decode_raw_grid(outputs, conf, input_size, multi_label=False) -> Detections:
    prediction = np.asarray(outputs[specs.DETECTOR_OUTPUT])
    if prediction.ndim != 2 or prediction.shape[1] < 6:
        raise ValueError(f"raw grid output must be [K, 5 + classes], got {list(prediction.shape)}")
    _, boxes, scores, classes = raw_grid_candidates(prediction[None], np.array([conf], prediction.dtype),
                                                    np.array([True]) if multi_label else None)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int32))


def _raw_grid_mismatch(declared, num_classes):
    why = _single_fp32(declared, specs.DETECTOR_OUTPUT)
    dims = list(declared[specs.DETECTOR_OUTPUT].dims) if why is None else []
    if why is None and (len(dims) != 2 or dims[1] not in (-1, 5 + num_classes)):
        why = f"expected [K, {5 + num_classes}] (4 box + objectness + {num_classes} classes)"
    return why


RAW_GRID = Layout(
    specs.LAYOUT_RAW_GRID, True, True,
    lambda spec: (TensorSpec(specs.DETECTOR_OUTPUT, "TYPE_FP32", (spec.num_candidates, spec.num_outputs)),),
    _raw_grid_mismatch, _decode_raw_grid)


# ------------------------------------------------------------------------------------------------- EfficientNMS

NUM_DETS, DET_BOXES, DET_SCORES, DET_CLASSES = specs.EFFICIENT_NMS_OUTPUTS
EFFICIENT_NMS_TYPES = {NUM_DETS: "TYPE_INT32", DET_BOXES: "TYPE_FP32", DET_SCORES: "TYPE_FP32", DET_CLASSES: "TYPE_INT32"}


def _efficient_nms_mismatch(declared, num_classes):
    if set(declared) != set(specs.EFFICIENT_NMS_OUTPUTS):
        return f"expected exactly {', '.join(specs.EFFICIENT_NMS_OUTPUTS)}"
    for name, data_type in EFFICIENT_NMS_TYPES.items():
        if declared[name].data_type != data_type:
            return f"{name} must be {data_type}"
    k = declared[DET_SCORES].dims[-1]
    if list(declared[DET_BOXES].dims) not in ([k, 4], [-1, 4]) or list(declared[DET_CLASSES].dims) not in ([k], [-1]):
        return f"{DET_BOXES} must be [k, 4], {DET_SCORES} and {DET_CLASSES} [k]"
    return None


def _decode_efficient_nms(outputs, conf, input_size) -> Detections:
    """The first ``num_dets`` slots are the kept boxes (x1, y1, x2, y2 input pixels), score order. The engine's own
    score threshold was fixed at export; a request may still ask for a higher one."""
    scores = np.asarray(outputs[DET_SCORES], np.float32).reshape(-1)
    count = int(np.clip(np.asarray(outputs[NUM_DETS]).reshape(-1)[0], 0, len(scores)))
    boxes = np.asarray(outputs[DET_BOXES], np.float32).reshape(-1, 4)[:count]
    classes = np.asarray(outputs[DET_CLASSES]).reshape(-1)[:count].astype(np.int32)
    keep = scores[:count] > conf
    return Detections(boxes[keep], scores[:count][keep], classes[keep])


EFFICIENT_NMS = Layout(
    specs.LAYOUT_EFFICIENT_NMS, False, False,
    lambda spec: tuple(TensorSpec(name, EFFICIENT_NMS_TYPES[name], dims) for name, dims in zip(
        specs.EFFICIENT_NMS_OUTPUTS, ((1,), (spec.nms_top_k, 4), (spec.nms_top_k,), (spec.nms_top_k,)))),
    _efficient_nms_mismatch, _decode_efficient_nms)


# ------------------------------------------------------------------------------------------------- rows of seven

def _single_fp32(declared, name: str) -> Optional[str]:
    if list(declared) != [name] or declared[name].data_type != "TYPE_FP32":
        return f"expected one FP32 output named {name!r}"
    return None


def _rows_of_seven_mismatch(name: str, header: int, shape_text: str):
    def mismatch(declared, num_classes):
        why = _single_fp32(declared, name)
        if why is None:
            dims = list(declared[name].dims)
            values = int(np.prod(dims)) if all(d > 0 for d in dims) else -1
            if any(d != 1 for d in dims[1:]) or (values > 0 and (values - header) % 7):
                why = f"expected [n, 1, 1] with n = {shape_text}"
        return why
    return mismatch


def _scored_rows(rows: np.ndarray, boxes_xyxy: np.ndarray, conf: float) -> Detections:
    """Rows of (box…, det_conf, class_id, class_conf) → detections scored det_conf × class_conf above ``conf``."""
    scores = rows[:, 4] * rows[:, 6]
    keep = scores > conf
    return Detections(boxes_xyxy[keep].astype(np.float32), scores[keep].astype(np.float32), rows[keep, 5].astype(np.int32))


def _decode_tensorrtx_prob(outputs, conf, input_size) -> Detections:
    """``prob[0]`` = rows filled, then the rows; rows past the count are stale memory and ignored, a count past the
    buffer is clipped."""
    flat = np.asarray(outputs[specs.TENSORRTX_OUTPUT], np.float32).reshape(-1)
    if flat.size < 1 or (flat.size - 1) % 7:
        raise ValueError(f"tensorrtx prob output must hold 1 + 7·n values, got {flat.size}")
    count = int(np.clip(np.nan_to_num(flat[0]), 0, (flat.size - 1) // 7))
    rows = flat[1 : 1 + 7 * count].reshape(-1, 7)
    return _scored_rows(rows, xywh_to_xyxy(rows[:, :4]), conf)


def _decode_isarsoft_detections(outputs, conf, input_size) -> Detections:
    flat = np.asarray(outputs[specs.ISARSOFT_OUTPUT], np.float32).reshape(-1)
    if flat.size % 7:
        raise ValueError(f"isarsoft detections output: {flat.size} values is not a whole number of 7-value rows")
    rows = flat.reshape(-1, 7)
    height, width = input_size
    x, y, w, h = (rows[:, :4] * np.array([width, height, width, height], np.float32)).T
    return _scored_rows(rows, np.stack([x, y, x + w, y + h], axis=1), conf)


TENSORRTX_PROB = Layout(
    specs.LAYOUT_TENSORRTX_PROB, True, False,
    lambda spec: (TensorSpec(specs.TENSORRTX_OUTPUT, "TYPE_FP32", (1 + 7 * TENSORRTX_MAX_BOXES, 1, 1)),),
    _rows_of_seven_mismatch(specs.TENSORRTX_OUTPUT, 1, "1 + 7·boxes"), _decode_tensorrtx_prob)

ISARSOFT_DETECTIONS = Layout(
    specs.LAYOUT_ISARSOFT_DETECTIONS, True, False,
    lambda spec: (TensorSpec(specs.ISARSOFT_OUTPUT, "TYPE_FP32", (7 * spec.num_candidates, 1, 1)),),
    _rows_of_seven_mismatch(specs.ISARSOFT_OUTPUT, 0, "7·candidates"), _decode_isarsoft_detections)


LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (RAW_GRID, EFFICIENT_NMS, TENSORRTX_PROB, ISARSOFT_DETECTIONS)}
assert tuple(LAYOUTS) == specs.LAYOUT_NAMES


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unsupported detector output layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def detector_outputs(spec: specs.ModelSpec) -> Tuple[TensorSpec, ...]:
    """What the detector of ``spec`` returns per image: its config's outputs and the postprocess's inputs."""
    return get_layout(spec.layout).outputs(spec)


def check_detector_outputs(layout: str, outputs: Sequence[TensorSpec], num_classes: int) -> None:
    """Raise ValueError unless ``outputs`` (a detector's declared outputs, batch dim excluded) fit ``layout``.

    Run when the postprocess loads, so that a detector/layout mismatch fails the model load with a message
    instead of every request with an index error."""
    why = get_layout(layout).mismatch({t.name: t for t in outputs}, num_classes)
    if why:
        found = ", ".join(f"{t.name} {t.data_type} {list(t.dims)}" for t in outputs) or "none"
        raise ValueError(f"detector outputs [{found}] do not fit layout {layout!r}: {why}")


def layouts_fitting(outputs: Sequence[TensorSpec], num_classes: Optional[int] = None) -> Tuple[str, ...]:
    """The layouts whose check ``outputs`` pass (``num_classes`` None: whatever count the outputs imply)."""
    declared = {t.name: t for t in outputs}
    fitting = []
    for layout in LAYOUTS.values():
        classes = num_classes
        if classes is None:  # a raw grid says its class count itself; the other layouts do not depend on it
            width = declared[specs.DETECTOR_OUTPUT].dims[-1] if specs.DETECTOR_OUTPUT in declared else -1
            classes = width - 5 if width > 5 else -1
        if layout.mismatch(declared, classes) is None:
            fitting.append(layout.name)
    return tuple(fitting)


def check_request(layout: str, params: specs.DetectionParams) -> None:
    """Raise ValueError if a request asks for what a detector of ``layout`` cannot give (checked before the work)."""
    row = get_layout(layout)
    if params.agnostic_nms and not row.needs_nms:
        raise ValueError(f"agnostic_nms: this model's NMS runs inside its engine (layout {layout!r}), "
                         "with the options it was exported with")
    if params.multi_label and not row.per_class_scores:
        raise ValueError(f"multi_label: this model's detector returns one class per box (layout {layout!r}); "
                         "multi_label needs every class's score (the raw_grid layout)")


def decode(layout: str, outputs: Mapping[str, np.ndarray], conf: float, input_size, multi_label: bool = False
           ) -> Detections:
    """One image's detector outputs (tensor name → array) → candidate boxes in detector-input pixels."""
    row = get_layout(layout)
    if multi_label:
        if not row.per_class_scores:
            raise ValueError(f"layout {layout!r} has no per-class scores for multi_label")
        return row.decode(outputs, conf, input_size, multi_label=True)
    return row.decode(outputs, conf, input_size)

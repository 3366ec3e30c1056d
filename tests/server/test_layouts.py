"""Every detector output layout the postprocess understands, with synthetic outputs holding known boxes.

The test places objects in original-image pixels, maps them into detector-input pixels through a letterbox it
computes itself, encodes them the way each engine family writes its outputs (plus duplicates, low scores and
stale rows that must not come back), and checks the exact boxes the postprocess returns — in-process and
through the real server's postprocess models, over gRPC and HTTP.
"""
from __future__ import annotations

import numpy as np
import pytest

from yolo_triton import layouts
from yolo_triton.pipeline import postprocess as post
from yolo_triton.specs import DetectionParams
from yolo_triton import specs
from yolo_triton.boxes import LetterboxMeta
from yolo_triton.repository import check_against_detector_config, repository_files

from ..helpers import LAYOUT_SPECS, client_for

ORIGINAL_HW = (300, 500)
INPUT_HW = (320, 320)

# (x1, y1, x2, y2) in original pixels, class, score
OBJECTS = [
    ((50.0, 40.0, 200.0, 180.0), 0, 0.90),
    ((-20.0, 250.0, 60.0, 330.0), 3, 0.80),  # runs off the image: comes back clipped
    ((260.0, 100.0, 480.0, 290.0), 16, 0.70),
    ((55.0, 45.0, 205.0, 185.0), 0, 0.60),  # overlaps the first of its class: NMS removes it
    ((50.0, 40.0, 200.0, 180.0), 5, 0.50),  # same place, other class: per-class NMS keeps it
    ((10.0, 200.0, 90.0, 280.0), 2, 0.40),
    ((300.0, 10.0, 340.0, 60.0), 7, 0.10),  # under the confidence threshold
]
SUPPRESSED = {3}  # index into OBJECTS
DEFAULTS = DetectionParams(conf_threshold=0.25, iou_threshold=0.45, max_detections=300)


def letterbox_meta_array():
    """The test's own letterbox arithmetic (official: gain = min ratio, pad = half the leftover, unrounded)."""
    h, w = ORIGINAL_HW
    gain = min(INPUT_HW[0] / h, INPUT_HW[1] / w)
    return np.array([h, w, gain, gain, (INPUT_HW[1] - w * gain) / 2, (INPUT_HW[0] - h * gain) / 2], np.float32)


def to_input_pixels(box):
    _, _, gain, _, pad_x, pad_y = letterbox_meta_array()
    x1, y1, x2, y2 = box
    return np.array([x1 * gain + pad_x, y1 * gain + pad_y, x2 * gain + pad_x, y2 * gain + pad_y], np.float32)


def expected(conf=0.25, max_det=300, nms=True):
    h, w = ORIGINAL_HW
    rows = [
        (np.clip(box, 0, [w, h, w, h]), cls, score)
        for i, (box, cls, score) in enumerate(OBJECTS)
        if score > conf and not (nms and i in SUPPRESSED)
    ]
    rows.sort(key=lambda row: -row[2])
    return rows[:max_det]


def objects_for(layout):
    # EfficientNMS engines have suppressed duplicates already: the duplicate is not in their output
    return [obj for i, obj in enumerate(OBJECTS) if layout != specs.LAYOUT_EFFICIENT_NMS or i not in SUPPRESSED]


def encode(layout, spec, rng):
    """One image's detector outputs in ``layout`` holding OBJECTS, as that engine family writes them."""
    objects = objects_for(layout)
    boxes = np.array([to_input_pixels(box) for box, _, _ in objects])
    classes = np.array([cls for _, cls, _ in objects])
    scores = np.array([score for _, _, score in objects], np.float32)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if layout == specs.LAYOUT_RAW_GRID:
        grid = np.zeros((spec.num_candidates, spec.num_outputs), np.float32)
        rows = rng.choice(spec.num_candidates, len(objects), replace=False)
        objectness = 0.95
        grid[rows, :4] = np.stack([cx, cy, bw, bh], 1)
        grid[rows, 4] = objectness
        grid[rows, 5 + classes] = scores / objectness
        return {specs.DETECTOR_OUTPUT: grid}
    if layout == specs.LAYOUT_EFFICIENT_NMS:
        k = spec.nms_top_k
        order = np.argsort(-scores)
        det_boxes = rng.uniform(0, 320, (k, 4)).astype(np.float32)  # slots past num_dets hold junk
        det_scores = rng.uniform(0.5, 1, k).astype(np.float32)
        det_classes = rng.integers(0, 80, k).astype(np.int32)
        n = len(objects)
        det_boxes[:n], det_scores[:n], det_classes[:n] = boxes[order], scores[order], classes[order]
        return {"num_dets": np.array([n], np.int32), "det_boxes": det_boxes, "det_scores": det_scores,
                "det_classes": det_classes}
    det_conf = np.sqrt(scores)  # score = det_conf × class_conf
    class_conf = scores / det_conf
    if layout == specs.LAYOUT_TENSORRTX_PROB:
        rows = np.stack([cx, cy, bw, bh, det_conf, classes, class_conf], 1)
        stale = np.column_stack([rng.uniform(0, 320, (50, 4)), np.ones(50), rng.integers(0, 80, 50), np.ones(50)])
        prob = np.zeros(1 + 7 * layouts.TENSORRTX_MAX_BOXES, np.float32)
        prob[0] = len(rows)
        prob[1 : 1 + 7 * (len(rows) + 50)] = np.concatenate([rows, stale]).reshape(-1)  # stale rows past the count
        return {"prob": prob.reshape(-1, 1, 1)}
    if layout == specs.LAYOUT_ISARSOFT_DETECTIONS:
        height, width = spec.input_size
        rows = np.zeros((spec.num_candidates, 7), np.float32)  # every candidate is written; most score 0
        rows[:, 5] = rng.integers(0, 80, spec.num_candidates)
        at = rng.choice(spec.num_candidates, len(objects), replace=False)
        rows[at] = np.stack([boxes[:, 0] / width, boxes[:, 1] / height, bw / width, bh / height, det_conf, classes, class_conf], 1)
        return {"detections": rows.reshape(-1, 1, 1)}
    raise AssertionError(layout)


def assert_matches(boxes, scores, classes, want):
    assert len(scores) == len(want), (scores, [w[2] for w in want])
    for i, (box, cls, score) in enumerate(want):
        np.testing.assert_allclose(boxes[i], box, atol=2e-3)
        assert classes[i] == cls
        np.testing.assert_allclose(scores[i], score, rtol=1e-5)


@pytest.mark.parametrize("layout", specs.LAYOUT_NAMES)
@pytest.mark.parametrize("conf, max_det", [(0.25, 300), (0.45, 300), (0.25, 2)])
def test_layout_gives_the_known_boxes(layout, conf, max_det):
    spec = LAYOUT_SPECS[layout]
    outputs = encode(layout, spec, np.random.default_rng(0))
    params = DEFAULTS.updated({"conf_threshold": conf, "max_detections": max_det})
    result = post.postprocess(outputs, LetterboxMeta.from_array(letterbox_meta_array()), params, layout, spec.input_size)
    assert_matches(result.boxes, result.scores, result.classes, expected(conf, max_det))


def test_request_options_a_layout_cannot_honour_are_refused():
    """EfficientNMS ran its NMS in the engine: classes still filter its boxes, agnostic NMS cannot be had; rows of
    seven carry one class per box: no multi_label."""
    efficient, tensorrtx = specs.LAYOUT_EFFICIENT_NMS, specs.LAYOUT_TENSORRTX_PROB
    layouts.check_request(efficient, DEFAULTS.updated({"classes": "3,16", "multi_label": False}))
    with pytest.raises(ValueError, match="agnostic_nms: this model's NMS runs inside its engine"):
        layouts.check_request(efficient, DEFAULTS.updated({"agnostic_nms": True}))
    layouts.check_request(tensorrtx, DEFAULTS.updated({"agnostic_nms": True}))
    with pytest.raises(ValueError, match="multi_label: this model's detector returns one class per box"):
        layouts.check_request(tensorrtx, DEFAULTS.updated({"multi_label": True}))
    spec = LAYOUT_SPECS[efficient]
    outputs = encode(efficient, spec, np.random.default_rng(0))
    want = [w for w in expected(0.25, 300) if w[1] in (3, 16)]
    assert 0 < len(want) < len(expected(0.25, 300))
    result = post.postprocess(outputs, LetterboxMeta.from_array(letterbox_meta_array()),
                              DEFAULTS.updated({"classes": "3,16"}), efficient, spec.input_size)
    assert_matches(result.boxes, result.scores, result.classes, want)


def test_tensorrtx_count_beyond_the_buffer_is_clipped_not_a_crash():
    prob = np.zeros(1 + 7 * 3, np.float32)
    prob[0] = 1e9
    prob[1:] = np.tile([10, 10, 4, 4, 0.9, 1, 0.9], 3)
    result = layouts.decode(specs.LAYOUT_TENSORRTX_PROB, {specs.TENSORRTX_OUTPUT: prob}, 0.25, None)
    assert len(result) == 3


def test_rows_of_seven_are_required():
    with pytest.raises(ValueError, match="7"):
        layouts.decode(specs.LAYOUT_ISARSOFT_DETECTIONS, {specs.ISARSOFT_OUTPUT: np.zeros(15, np.float32)}, 0.25, (32, 32))
    with pytest.raises(ValueError, match="1 \\+ 7"):
        layouts.decode(specs.LAYOUT_TENSORRTX_PROB, {specs.TENSORRTX_OUTPUT: np.zeros(9, np.float32)}, 0.25, None)


@pytest.mark.parametrize("layout", specs.LAYOUT_NAMES)
def test_generated_detector_outputs_fit_their_layout(layout):
    spec = LAYOUT_SPECS[layout]
    layouts.check_detector_outputs(layout, layouts.detector_outputs(spec), spec.num_classes)


@pytest.mark.parametrize(
    "layout, outputs, match",
    [
        (specs.LAYOUT_RAW_GRID, [specs.TensorSpec("output", "TYPE_FP32", (25200, 84))], "85"),
        (specs.LAYOUT_RAW_GRID, [specs.TensorSpec("prob", "TYPE_FP32", (7001, 1, 1))], "named 'output'"),
        (specs.LAYOUT_TENSORRTX_PROB, [specs.TensorSpec("prob", "TYPE_FP32", (7000, 1, 1))], "1 \\+ 7"),
        (specs.LAYOUT_ISARSOFT_DETECTIONS, [specs.TensorSpec("detections", "TYPE_FP16", (7, 1, 1))], "FP32"),
        (specs.LAYOUT_EFFICIENT_NMS, [specs.TensorSpec("output", "TYPE_FP32", (25200, 85))], "num_dets"),
        (specs.LAYOUT_EFFICIENT_NMS, layouts.detector_outputs(specs.YOLOV7.with_overrides(layout="efficient_nms"))[:3]
         + (specs.TensorSpec("det_classes", "TYPE_FP32", (100,)),), "det_classes must be TYPE_INT32"),
        ("tensorrtx", [specs.TensorSpec("prob", "TYPE_FP32", (7001, 1, 1))], "unsupported"),
    ],
)
def test_detector_outputs_that_do_not_fit_are_refused(layout, outputs, match):
    with pytest.raises(ValueError, match=match):
        layouts.check_detector_outputs(layout, outputs, 80)


def test_postprocess_inputs_are_checked_against_the_detectors_config(tmp_path):
    spec = LAYOUT_SPECS[specs.LAYOUT_TENSORRTX_PROB]
    config = tmp_path / "config.pbtxt"
    config.write_text(repository_files(spec)[f"{spec.name}/config.pbtxt"])
    check_against_detector_config(layouts.detector_outputs(spec), config)  # as generated: agrees
    with pytest.raises(ValueError, match="declares outputs"):
        check_against_detector_config(layouts.detector_outputs(LAYOUT_SPECS[specs.LAYOUT_RAW_GRID]), config)
    check_against_detector_config(layouts.detector_outputs(spec), tmp_path / "absent" / "config.pbtxt")  # nothing to check


@pytest.mark.parametrize("layout", specs.LAYOUT_NAMES)
def test_server_postprocess_model_reads_the_layout(server, protocol, layout):
    """The generated postprocess model in the real server, fed the layout's tensors directly as its detector
    would feed it inside the ensemble; two images in one request, the second with no objects."""
    spec = LAYOUT_SPECS[layout]
    module, client = client_for(server, protocol)
    first = encode(layout, spec, np.random.default_rng(1))
    empty = {name: np.zeros_like(value) for name, value in first.items()}
    inputs = []
    for t in layouts.detector_outputs(spec):
        array = np.stack([first[t.name], empty[t.name]]).astype(np.int32 if t.data_type == "TYPE_INT32" else np.float32)
        tensor = module.InferInput(t.name, list(array.shape), t.data_type[len("TYPE_"):])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    meta = np.stack([letterbox_meta_array()] * 2)
    tensor = module.InferInput(specs.LETTERBOX_META, list(meta.shape), "FP32")
    tensor.set_data_from_numpy(meta)
    inputs.append(tensor)
    result = client.infer(spec.postprocess_name, inputs, parameters={"conf_threshold": 0.45})
    num = result.as_numpy("num_detections")
    assert num[1, 0] == 0
    n = num[0, 0]
    want = expected(conf=0.45)
    assert_matches(result.as_numpy("boxes")[0, :n], result.as_numpy("scores")[0, :n], result.as_numpy("classes")[0, :n], want)
    names = [name.decode() for name in result.as_numpy("class_names")[0, :n]]
    assert names == [specs.COCO80_NAMES[cls] for _, cls, _ in want]

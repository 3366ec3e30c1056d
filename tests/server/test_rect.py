"""Rectangular inference on a real tritonserver: each image letterboxed as the official detect.py's default
(``letterbox(auto=True)``: padded only to the stride) onto the smallest detector shape that holds it, boxes equal to
an independent re-implementation of detect.py's path (tests/reference.py ``RectReference``)."""
from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from ..helpers import RECT, RECT_CANVAS as CANVAS, assert_same_detections, client_for, infer_images

CONF = 0.02


@pytest.mark.parametrize("model", [RECT.ensemble_name, "yolov7_rect_torch_e2e"], ids=["onnxruntime", "torch"])
@pytest.mark.parametrize("frame", sorted(CANVAS))
def test_rect_boxes_are_detect_py_default(server, protocol, rect_frames, reference_rect, frame, model):
    """Where the frame's own canvas is a bucket (16:9, 4:3, 9:16), exactly detect.py's letterbox(auto=True);
    otherwise the same fit onto the bucket that holds it. Both CPU runtimes: onnxruntime on the ONNX of dynamic
    height and width, our PyTorch module (RUNTIME=torch) on the same weights."""
    module, client = client_for(server, protocol)
    own_canvas = reference_rect.canvas_and_input(rect_frames[frame])[0]
    forced = None if own_canvas == CANVAS[frame] else CANVAS[frame]
    expected = reference_rect.detect(rect_frames[frame], conf=CONF, canvas_hw=forced)
    assert len(expected[1]) > 0, "the reference finds nothing: the comparison would prove nothing"
    result = infer_images(module, client, model, [rect_frames[frame]], parameters={"conf_threshold": CONF})
    assert_same_detections(result, expected)


def test_rect_frame_costs_fewer_pixels_than_the_square():
    """1920×1080 at 640: detect.py's canvas is 384×640, 40 % fewer pixels than 640×640 (the issue's arithmetic)."""
    from yolo_triton import specs
    from yolo_triton.boxes import rect_canvas

    canvas = rect_canvas([(1080, 1920)], specs.YOLOV7.with_overrides(rect=True).rect_buckets(), (640, 640), 32)
    assert canvas == (384, 640) and 1 - canvas[0] * canvas[1] / 640 ** 2 == pytest.approx(0.4)


def test_one_request_of_different_shapes_shares_the_bucket_that_holds_them(server, rect_frames, reference_rect):
    """A 16:9 frame and a 4:3 photo in one request: both on 256×320 (the 16:9 frame padded beyond its own canvas)."""
    module, client = client_for(server, "grpc")
    names = ["astronaut_1920x1080", "astronaut_640x480"]
    result = infer_images(module, client, RECT.ensemble_name, [rect_frames[n] for n in names],
                          parameters={"conf_threshold": CONF})
    for index, name in enumerate(names):
        assert_same_detections(result, reference_rect.detect(rect_frames[name], conf=CONF, canvas_hw=(256, 320)), index=index)


def test_concurrent_requests_of_different_shapes_each_get_their_answer(server, rect_frames, reference_rect):
    """48 requests of three shapes in flight: the detector runs each shape as its own batch; none swaps or drops."""
    names = ["astronaut_1920x1080", "astronaut_640x480", "astronaut_1080x1920"] * 16
    expected = {name: reference_rect.detect(rect_frames[name], conf=CONF) for name in set(names)}

    def call(name):
        module, client = client_for(server, "grpc")
        return name, infer_images(module, client, RECT.ensemble_name, [rect_frames[name]], parameters={"conf_threshold": CONF})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for name, result in pool.map(call, names):
            assert_same_detections(result, expected[name])
    assert len({np.asarray(expected[n][1]).size for n in set(names)}) > 1, "the shapes' answers must differ"

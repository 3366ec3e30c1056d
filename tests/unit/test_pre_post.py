"""Unit tests of the shared pre/post functions against the test's own reference code."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from yolo_triton.boxes import Detections, Letterbox, LetterboxMeta, scale_boxes
from yolo_triton.pipeline import decode, postprocess as post, preprocess as pre
from yolo_triton.specs import DetectionParams

from ..reference import ref_detect, ref_input, ref_letterbox, ref_nms_per_class


def random_photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content (resampling differences would hide in noise) plus a little noise
    base = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base.astype(np.int16) + rng.integers(-5, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (15, 23), (2900, 4400), (640, 640), (1, 1), (10, 1000), (333, 333), (1, 3000)])
@pytest.mark.parametrize("target", [(640, 640), (256, 320), (608, 608)])
def test_letterbox_matches_reference(hw, target):
    image = random_photo(*hw)
    tensor, meta = pre.fit_image(image, target)
    expected = ref_letterbox(image, target)[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(tensor, expected)
    assert (meta.height, meta.width) == hw
    # the meta maps the letterboxed image's content corners back onto the original corners
    corners = np.array([[meta.pad_x, meta.pad_y, target[1] - meta.pad_x, target[0] - meta.pad_y]], np.float32)
    np.testing.assert_allclose(scale_boxes(corners, meta), [[0, 0, hw[1], hw[0]]], atol=1e-3)


def test_preprocess_image_is_reference_input():
    data = cv2.imencode(".png", random_photo(300, 451))[1].tobytes()
    tensor, meta = pre.preprocess_image(data, (256, 320))
    expected, orig = ref_input(data, (256, 320))
    np.testing.assert_array_equal(tensor, expected[0])
    assert tensor.dtype == np.float32 and tensor.shape == (3, 256, 320)
    assert (meta.height, meta.width) == orig
    np.testing.assert_array_equal(LetterboxMeta.from_array(meta.to_array()).to_array(), meta.to_array())


@pytest.mark.parametrize(
    "make",
    [
        lambda img: cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))[1],
        lambda img: cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))[1],
        lambda img: cv2.imencode(".png", img.astype(np.uint16) * 257)[1],
        lambda img: cv2.imencode(".bmp", img)[1],
        lambda img: cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])[1],
    ],
    ids=["gray", "alpha", "16bit", "bmp", "webp-lossless"],
)
def test_decode_gives_three_channel_uint8(make):
    image = random_photo(40, 60)
    decoded = decode.decode_image(make(image).tobytes())
    assert decoded.shape == (40, 60, 3) and decoded.dtype == np.uint8


@pytest.mark.parametrize(
    "data, limits, message",
    [
        (b"", decode.DecodeLimits(), "empty input"),
        (b"GIF89a not really", decode.DecodeLimits(), "cannot decode"),
        (b"x" * 2000, decode.DecodeLimits(max_bytes=1000), "over the limit of 1000"),
        # a 16-byte PPM header declaring 2,000,000×1 pixels: OpenCV would throw, HDR-like headers could OOM
        (b"P6\n2000000 1\n255\n", decode.DecodeLimits(), "unsupported image format PPM"),
    ],
)
def test_decode_errors_are_clear(data, limits, message):
    with pytest.raises(decode.ImageDecodeError, match=message):
        decode.decode_image(data, limits)


def test_decode_refuses_images_over_the_pixel_limit_from_the_header():
    data = cv2.imencode(".png", random_photo(200, 300))[1].tobytes()
    with pytest.raises(decode.ImageDecodeError, match="declares 300x200 = 60000 pixels"):
        decode.decode_image(data, decode.DecodeLimits(max_pixels=50_000))


def random_prediction(k, nc=80, seed=0, input_hw=(256, 320)):
    rng = np.random.default_rng(seed)
    pred = np.empty((k, 5 + nc), np.float32)
    pred[:, 0] = rng.uniform(0, input_hw[1], k)
    pred[:, 1] = rng.uniform(0, input_hw[0], k)
    pred[:, 2:4] = rng.uniform(2, 120, (k, 2))
    pred[:, 4] = rng.beta(0.5, 2, k)
    pred[:, 5:] = rng.beta(0.5, 3, (k, nc))
    # clusters of near-duplicate boxes of one class, so NMS has real work
    pred[k // 2 :, :4] = pred[: k - k // 2, :4] + rng.normal(0, 3, (k - k // 2, 4))
    pred[:, 2:4] = pred[:, 2:4].clip(1, None)  # a YOLO head's w, h = (2·sigmoid)² · anchor are positive
    return pred


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("conf, iou, max_det", [(0.25, 0.45, 300), (0.05, 0.3, 300), (0.1, 0.6, 7), (0.99, 0.45, 300)])
def test_postprocess_matches_reference(seed, conf, iou, max_det):
    pred = random_prediction(3000, seed=seed)
    orig_hw = (480 + seed * 97, 640 - seed * 31)
    meta = Letterbox(orig_hw, (256, 320)).meta
    result = post.postprocess(pred, meta, DetectionParams(conf, iou, max_det))
    boxes, scores, classes = ref_detect(pred, orig_hw, (256, 320), conf, iou, max_det)
    assert len(result) == len(scores)
    np.testing.assert_array_equal(result.classes, classes)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
    np.testing.assert_allclose(result.boxes, boxes, atol=1e-3)


def test_nms_keeps_other_classes_and_suppresses_same_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0], np.int32)
    kept = post.batched_nms(Detections(boxes, scores, classes), 0.45, 300)
    np.testing.assert_array_equal(kept.scores, np.float32([0.9, 0.7, 0.6]))
    np.testing.assert_array_equal(np.sort(ref_nms_per_class(boxes, scores, classes, 0.45)), [0, 2, 3])


def test_empty_prediction_gives_no_detections():
    pred = np.zeros((100, 85), np.float32)
    result = post.postprocess(pred, Letterbox((10, 10), (64, 64)).meta, DetectionParams())
    assert len(result) == 0 and result.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"conf_threshold": "nan"}, "must be finite"),
        ({"iou_threshold": -0.1}, r"in \[0, 1\]"),
        ({"max_detections": 0}, "max_detections must be an integer in"),
        ({"max_detections": 2.5}, "must be an integer"),
        ({"max_detections": True}, "must be a number"),
        ({"nms": 1}, "unknown parameter"),
        ({"classes": "0;2"}, "classes must be comma-separated class ids"),
        ({"classes": [0, 2]}, "classes must be comma-separated class ids"),
        ({"classes": "-1"}, "classes must be comma-separated class ids"),
        ({"agnostic_nms": 1}, "agnostic_nms must be true or false"),
        ({"multi_label": "yes"}, "multi_label must be true or false"),
    ],
)
def test_detection_params_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        DetectionParams().updated(overrides)


def test_detection_params_from_strings_and_json():
    params = DetectionParams().updated({"conf_threshold": "0.4", "max_detections": "12"})
    assert params == DetectionParams(0.4, 0.45, 12)
    assert DetectionParams.from_request_json(params, '{"iou_threshold": 0.5}').iou_threshold == 0.5
    assert DetectionParams.from_request_json(params, "{}") == params
    options = DetectionParams.from_request_json(params, '{"classes": "2, 0,2", "agnostic_nms": true, "multi_label": "True"}')
    assert (options.classes, options.agnostic_nms, options.multi_label) == ((0, 2), True, True)
    assert DetectionParams().updated({"classes": 7}).classes == (7,)
    assert DetectionParams().updated({"classes": ""}).classes == ()
    with pytest.raises(ValueError, match=r"class ids of this model \(0 to 79\)"):
        DetectionParams.from_request_json(params, '{"classes": "3,80"}', num_classes=80)
    assert DetectionParams().updated(options.as_config()) == options  # what the config carries reads back the same


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("classes, agnostic, multi_label", [((3, 7), False, False), (None, True, False),
                                                             (None, False, True), ((1, 2, 5), True, True)])
def test_detect_py_options_match_reference(seed, classes, agnostic, multi_label):
    pred = random_prediction(3000, seed=seed)
    meta = Letterbox((480, 640), (256, 320)).meta
    params = DetectionParams(0.1, 0.45, 3000, tuple(classes or ()), agnostic, multi_label)
    result = post.postprocess(pred, meta, params)
    boxes, scores, found = ref_detect(pred, (480, 640), (256, 320), 0.1, 0.45, 3000, classes=classes,
                                      agnostic=agnostic, multi_label=multi_label)
    plain = ref_detect(pred, (480, 640), (256, 320), 0.1, 0.45, 3000)
    assert len(scores) != len(plain[1])  # the options change the answer
    assert len(result) == len(scores)
    np.testing.assert_array_equal(result.classes, found)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6)
    np.testing.assert_allclose(result.boxes, boxes, atol=1e-3)


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (427, 640), (15, 23), (333, 333), (1, 3000), (3000, 1)])
@pytest.mark.parametrize("target", [(608, 608), (416, 416), (320, 416)])
@pytest.mark.parametrize("fit,fill", [("stretch", 127.5), ("darknet", 127.5), ("darknet", 128)])
def test_darknet_fits_match_darknet(hw, target, fit, fill):
    """The YOLOv4 family as darknet feeds it: stretched to the network size (letter_box=0, darknet's default and
    the published yolov4 weights'), or darknet's letterbox (letter_box=1: integer sizes and offsets, grey 0.5; a
    pipeline such as tensorrtx fills 128); boxes mapped back as darknet's correct_yolo_boxes does."""
    from ..reference import ref_darknet_boxes, ref_darknet_fit

    image = random_photo(*hw)
    tensor, meta = pre.fit_image(image, target, fill, fit)
    expected = ref_darknet_fit(image, target, fit == "darknet", np.float32(fill) / np.float32(255)).transpose(2, 0, 1)
    np.testing.assert_array_equal(tensor, expected)
    rng = np.random.default_rng(1)
    boxes = np.sort(rng.uniform(-20, max(target) + 20, (50, 2, 2)), axis=1).transpose(0, 2, 1).reshape(50, 4)
    boxes = boxes[:, [0, 2, 1, 3]].astype(np.float32)  # x1 y1 x2 y2 with x1 <= x2, y1 <= y2
    np.testing.assert_allclose(scale_boxes(boxes, meta), ref_darknet_boxes(boxes, hw, target, fit == "darknet"),
                               rtol=1e-5, atol=1e-3)


def test_yolov4_specs_stretch_and_yolov7_letterboxes():
    from yolo_triton import specs

    assert (specs.YOLOV4.fit, specs.YOLOV4_TINY.fit, specs.YOLOV7.fit, specs.YOLOV7_TINY.fit) == \
        ("stretch", "stretch", "letterbox", "letterbox")
    assert specs.YOLOV7.pad_value == 114 and specs.YOLOV4.pad_value == 127.5

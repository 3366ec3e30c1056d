"""End to end: encoded photos into the ensemble on a real tritonserver, boxes compared with the reference."""
from __future__ import annotations

import concurrent.futures
import random

import numpy as np
import pytest


from ..helpers import FULL, LOW_CONF, SMALL, V4, V4_TINY, assert_same_detections, client_for, infer_images

@pytest.mark.parametrize(
    "photo",
    [
        "astronaut_square_png",
        "chelsea_landscape_png",
        "rocket_jpg",
        "coffee_landscape_jpg",
        "motorcycle_portrait_jpg",
        "chelsea_tiny_jpg",
        "astronaut_4k_jpg",
        "rocket_gray_png",
    ],
)
def test_photo_matches_reference(server, protocol, photos, reference_small, photo):
    module, client = client_for(server, protocol)
    result = infer_images(module, client, SMALL.ensemble_name, [photos[photo]], parameters=LOW_CONF)
    expected = reference_small.detect(photos[photo], conf=LOW_CONF["conf_threshold"])
    assert len(expected[1]) > 0, "the reference finds nothing: the comparison would prove nothing"
    assert_same_detections(result, expected)
    # boxes lie inside the original image
    height, width = reference_small.raw(photos[photo])[1]
    n = int(result["num_detections"][0, 0])
    boxes = result["boxes"][0, :n]
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= width).all()
    assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= height).all()


def test_full_size_yolov7_matches_reference(server, photos, reference_full):
    """The real 640×640 YOLOv7 (36.9 M parameters), defaults from config.pbtxt and a low threshold."""
    assert server.is_ready()
    module, client = client_for(server, "grpc")
    photo = photos["motorcycle_portrait_jpg"]
    result = infer_images(module, client, FULL.ensemble_name, [photo], parameters=LOW_CONF)
    expected = reference_full.detect(photo, conf=LOW_CONF["conf_threshold"])
    assert len(expected[1]) > 0
    assert_same_detections(result, expected)
    assert result["boxes"].shape[1:] == (len(expected[1]), 4)


@pytest.mark.parametrize("spec", [V4, V4_TINY], ids=lambda s: s.name)
@pytest.mark.parametrize(
    "photo, conf",
    [("astronaut_square_png", None), ("coffee_landscape_jpg", 0.05), ("motorcycle_portrait_jpg", 0.05), ("rocket_gray_png", 0.05)],
)
def test_yolov4_matches_reference(server, protocol, photos, reference_v4, spec, photo, conf):
    """YOLOv4 and yolov4-tiny (built from the darknet cfg) through their ensembles, official semantics: at the
    config defaults (conf 0.25, IoU 0.45, max_det 300) where random weights give boxes there, else at a lower
    confidence so that there are boxes to compare."""
    module, client = client_for(server, protocol)
    result = infer_images(module, client, spec.ensemble_name, [photos[photo]],
                          parameters=None if conf is None else {"conf_threshold": conf})
    expected = reference_v4[spec.name].detect(photos[photo], conf=conf or 0.25, iou=0.45, max_det=300)
    assert len(expected[1]) > 0, "the reference finds nothing: the comparison would prove nothing"
    assert_same_detections(result, expected)


def test_thresholds_default_from_config(server, protocol, photos, reference_full):
    """No request parameters: the config.pbtxt defaults (conf 0.3 in the test repository, IoU 0.45) apply."""
    module, client = client_for(server, protocol)
    photo = photos["astronaut_square_png"]
    result = infer_images(module, client, FULL.ensemble_name, [photo])
    expected = reference_full.detect(photo, conf=FULL.conf_threshold, iou=FULL.iou_threshold)
    assert len(expected[1]) > 0, "no boxes at the default threshold: the comparison would prove nothing"
    assert_same_detections(result, expected)
    # the built-in 0.25 would give more boxes: the server's count proves the config value was applied
    assert len(reference_full.detect(photo, conf=0.25)[1]) > int(result["num_detections"][0, 0])


@pytest.mark.parametrize(
    "overrides",
    [
        {"conf_threshold": 0.05, "iou_threshold": 0.3},
        {"conf_threshold": 0.01, "iou_threshold": 0.7, "max_detections": 5},
        {"conf_threshold": 0.9},
    ],
)
def test_request_parameters_override_thresholds(server, protocol, photos, reference_small, overrides):
    module, client = client_for(server, protocol)
    photo = photos["astronaut_square_png"]
    result = infer_images(module, client, SMALL.ensemble_name, [photo], parameters=overrides)
    expected = reference_small.detect(
        photo,
        conf=overrides.get("conf_threshold", 0.25),
        iou=overrides.get("iou_threshold", 0.45),
        max_det=overrides.get("max_detections", 300),
    )
    assert_same_detections(result, expected)
    if "max_detections" in overrides:
        assert int(result["num_detections"][0, 0]) == overrides["max_detections"]


@pytest.mark.parametrize("options", [{"classes": 2}, {"agnostic_nms": True}, {"multi_label": True},
                                     {"classes": 3, "agnostic_nms": True, "multi_label": True}],
                         ids=["classes", "agnostic", "multi-label", "all-three"])
def test_detect_py_options_match_the_official_semantics(server, protocol, photos, reference_small, options):
    """``classes`` / ``agnostic_nms`` / ``multi_label`` per request = the official non_max_suppression's
    ``classes`` / ``agnostic`` / ``multi_label`` (the reference), on every photo, and the option changes the answer
    on some. ``classes`` here: how many of the reference's most frequent classes to keep."""
    module, client = client_for(server, protocol)
    conf, changed = 0.02, []
    for photo in ("astronaut_square_png", "coffee_landscape_jpg", "chelsea_landscape_png", "rocket_jpg"):
        plain = reference_small.detect(photos[photo], conf=conf)
        kept = None
        if "classes" in options:  # the most frequent classes of the plain answer: the filter keeps some, drops some
            ids, counts = np.unique(plain[2], return_counts=True)
            kept = sorted(int(c) for c in ids[np.argsort(-counts, kind="stable")][: options["classes"]])
        parameters = {"conf_threshold": conf, **options, **({"classes": ",".join(map(str, kept))} if kept else {})}
        expected = reference_small.detect(photos[photo], conf=conf, classes=kept,
                                          agnostic=options.get("agnostic_nms", False),
                                          multi_label=options.get("multi_label", False))
        result = infer_images(module, client, SMALL.ensemble_name, [photos[photo]], parameters=parameters)
        assert_same_detections(result, expected)
        if kept:
            assert set(result["classes"][0, : int(result["num_detections"][0, 0])]) <= set(kept)
        changed.append(len(expected[1]) != len(plain[1]) or not np.array_equal(expected[2], plain[2]))
    assert any(changed), "the option changes nothing on these photos: the comparison proves nothing"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"conf_threshold": 1.5}, "conf_threshold must be a number in [0, 1]"),
        ({"confidence": 0.3}, "unknown parameter(s) confidence"),
        ({"max_detections": "many"}, "max_detections must be an integer"),
        ({"classes": "person"}, "classes must be comma-separated class ids"),
        ({"classes": "80"}, "classes must be class ids of this model (0 to 79)"),
        ({"agnostic_nms": "maybe"}, "agnostic_nms must be true or false"),
        ({"multi_label": 2}, "multi_label must be true or false"),
    ],
)
def test_bad_request_parameter_is_a_clear_error(server, protocol, photos, bad, message):
    module, client = client_for(server, protocol)
    with pytest.raises(module.InferenceServerException) as raised:
        infer_images(module, client, SMALL.ensemble_name, [photos["rocket_jpg"]], parameters=bad)
    assert message in str(raised.value)


def test_one_request_with_several_images(server, protocol, photos, reference_small):
    module, client = client_for(server, protocol)
    names = ["rocket_jpg", "chelsea_tiny_jpg", "coffee_landscape_jpg"]
    result = infer_images(module, client, SMALL.ensemble_name, [photos[n] for n in names], parameters=LOW_CONF)
    assert result["num_detections"].shape == (3, 1)
    for index, name in enumerate(names):
        assert_same_detections(result, reference_small.detect(photos[name], conf=0.02), index=index)


def test_concurrent_requests_of_different_sizes_each_get_their_answer(server, photos, reference_small):
    """64 requests in flight at once over both protocols: dynamic batching mixes them; none may swap or drop."""
    names = sorted(photos)
    order = [names[i % len(names)] for i in range(64)]
    random.Random(7).shuffle(order)
    expected = {name: reference_small.detect(photos[name], conf=0.02) for name in names}

    def call(i_name):
        index, name = i_name
        module, client = client_for(server, "grpc" if index % 2 else "http")
        return name, infer_images(module, client, SMALL.ensemble_name, [photos[name]], parameters=LOW_CONF)

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, enumerate(order)))
    assert len(results) == len(order)
    for name, result in results:
        assert_same_detections(result, expected[name])


def test_corrupt_image_gets_clear_error_and_others_are_unaffected(server, photos, reference_small):
    good = photos["rocket_jpg"]
    corrupt = good[:200] + bytes(random.Random(1).getrandbits(8) for _ in range(800))
    junk = b"this is not an image"
    expected = reference_small.detect(good, conf=0.02)
    payloads = [good, corrupt, good, junk, good, b"", good, corrupt] * 3

    def call(i_payload):
        index, payload = i_payload
        module, client = client_for(server, "grpc" if index % 2 else "http")
        try:
            return "ok", infer_images(module, client, SMALL.ensemble_name, [payload], parameters=LOW_CONF)
        except module.InferenceServerException as error:
            return "error", str(error)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, enumerate(payloads)))
    for payload, (status, value) in zip(payloads, results):
        if payload == good:
            assert status == "ok", value
            assert_same_detections(value, expected)
        else:
            assert status == "error"
            assert "cannot decode" in value or "empty input" in value, value
    assert server.is_ready() and server.is_alive()


def test_error_in_a_multi_image_request_names_the_element(server, photos):
    module, client = client_for(server, "grpc")
    with pytest.raises(module.InferenceServerException, match=r"IMAGE\[1\]: cannot decode"):
        infer_images(module, client, SMALL.ensemble_name, [photos["rocket_jpg"], b"\xff\xd8\xff garbage"])

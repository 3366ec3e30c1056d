"""Models as users export them: the files the official YOLOv7 export.py wrote (tests/fixtures/official-export, a
narrow yolov7-tiny with random weights), built with `make build-engines` as a user runs it, served by a real
tritonserver, and checked against the official pipeline's own boxes on three photos — or refused with a paragraph
that says why and what to run instead.

| fixture | export.py flags | onnxruntime | TensorRT (checked statically: no TensorRT here) |
|---|---|---|---|
| a `yolov7-narrow-grid.onnx` | --grid | served, = official boxes | plan config, batch 1 |
| b `yolov7-narrow-grid-dynbatch.onnx` | --grid --dynamic-batch (dims symbolic) | served, = official boxes | batch 1–32 |
| c `yolov7-narrow-e2e-trt.onnx` | --grid --end2end | refused: EfficientNMS_TRT | plan config, batch 1 |
| d `yolov7-narrow-e2e-trt-dynbatch-simplify.onnx` | the seed's flags | refused | batch 1–32 |
| e `yolov7-narrow-e2e-ort-maxwh640.onnx` | --grid --end2end --max-wh 640 | refused: NMS in the graph | refused |
| f `yolov7-narrow-include-nms.onnx` | --grid --include-nms (no output shapes) | refused | plan config, batch 1 |
| `yolov7-narrow.pt` | (the checkpoint) | served, = official boxes (its width 0.25 from its own yaml) | — |
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage

from yolo_triton import specs
from yolo_triton.placement import PRESETS
from yolo_triton.repository import read_model_config
from yolo_triton.serving.triton import TritonServer

from ..helpers import ROOT, client_for, infer_images

FIXTURES = ROOT / "tests" / "fixtures" / "official-export"
GOLDEN = json.loads((FIXTURES / "golden_official_fp32.json").read_text())
PHOTOS = sorted(GOLDEN["images"])  # astronaut.png, coffee.png, motorcycle_left.png from the scikit-image wheel
MODEL = "yolov7_tiny"  # the narrow model's architecture (yolov7-tiny, width 0.25)
BOX_TOL, SCORE_TOL = 0.05, 1e-4  # FP32 in another runtime: the fixtures' README measured 0.0053 px and 1.1e-5


def build(tmp_path, runtime="onnxruntime", **files):
    """`make build-engines MODELS=yolov7_tiny RUNTIME=… <KIND>_yolov7_tiny=<fixture>` into a fresh repository."""
    env = {**os.environ, **{f"{kind}_{MODEL}": str(FIXTURES / name) for kind, name in files.items()}}
    env.pop("YOLO_TRITON_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "build.build_engines", "--models", MODEL, "--runtime", runtime,
                           "--repository", str(tmp_path / "repository"), "--artifacts", str(tmp_path / "artifacts")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def photo_bytes() -> list:
    return [(Path(skimage.__file__).parent / "data" / name).read_bytes() for name in PHOTOS]


def assert_official_boxes(result, index: int, photo: str):
    """The server's detections of one image = the official pipeline's, as sets: same count, each official box
    matched by class with the nearest box, within FP32 rounding."""
    expected = GOLDEN["images"][photo]["detections"]
    n = int(result["num_detections"][index, 0])
    assert n == len(expected), f"{photo}: {n} boxes, the official pipeline {len(expected)}"
    boxes, scores, classes = result["boxes"][index, :n], result["scores"][index, :n], result["classes"][index, :n]
    free = np.ones(n, bool)
    for official in expected:
        candidates = np.flatnonzero(free & (classes == official["class_id"]))
        assert len(candidates), f"{photo}: no box of class {official['class_id']} left for {official}"
        distance = np.abs(boxes[candidates] - np.array(official["box"], np.float32)).max(axis=1)
        best = candidates[int(np.argmin(distance))]
        assert distance.min() <= BOX_TOL, f"{photo}: {boxes[best].tolist()} vs official {official['box']}"
        assert abs(scores[best] - official["score"]) <= SCORE_TOL, f"{photo}: {scores[best]} vs {official['score']}"
        free[best] = False


def serve_and_check(repository: Path, log_dir: Path):
    """Serve the built model alone, send the photos one per request and, where the model batches, all in one
    request: the official boxes."""
    flags = ["--model-control-mode=explicit", f"--load-model={MODEL}_e2e", "--log-verbose=0"]
    config = read_model_config(repository / MODEL / "config.pbtxt")
    with TritonServer(repository, log_path=log_dir / "triton.log", extra=flags) as server:
        module, client = client_for(server, "grpc")
        photos = photo_bytes()
        for photo, data in zip(PHOTOS, photos):
            assert_official_boxes(infer_images(module, client, f"{MODEL}_e2e", [data]), 0, photo)
        if config.max_batch_size >= len(photos):
            together = infer_images(module, client, f"{MODEL}_e2e", photos)
            for index, photo in enumerate(PHOTOS):
                assert_official_boxes(together, index, photo)
    return config


@pytest.mark.parametrize("fixture,batch", [("yolov7-narrow-grid.onnx", 1), ("yolov7-narrow-grid-dynbatch.onnx", 32)])
def test_grid_exports_are_served_with_the_official_boxes(fixture, batch, tmp_path):
    done = build(tmp_path, ONNX=fixture)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    config = serve_and_check(tmp_path / "repository", tmp_path)
    # a fixed-batch export runs one image at a time; --dynamic-batch batches up to the spec's max
    assert config.max_batch_size == batch
    assert [(o.name, list(o.dims)) for o in config.output] == [(specs.DETECTOR_OUTPUT, [25200, 85])]


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_official_checkpoint_is_served_with_the_official_boxes(runtime, tmp_path):
    """The checkpoint's own yaml says width 0.25: the build takes it (and its class names), on either runtime."""
    done = build(tmp_path, runtime, WEIGHTS="yolov7-narrow.pt")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    serve_and_check(tmp_path / "repository", tmp_path)
    post = read_model_config(tmp_path / "repository" / f"{MODEL}_postprocess" / "config.pbtxt")
    assert json.loads(post.parameters["labels"].string_value) == list(specs.COCO80_NAMES)  # the checkpoint's names


@pytest.mark.parametrize("fixture", ["yolov7-narrow-e2e-trt.onnx", "yolov7-narrow-e2e-trt-dynbatch-simplify.onnx",
                                     "yolov7-narrow-include-nms.onnx"])
def test_tensorrt_nms_exports_are_refused_on_onnxruntime_with_what_to_do(fixture, tmp_path):
    done = build(tmp_path, ONNX=fixture)
    assert done.returncode == 2
    message = done.stderr
    assert "Traceback" not in message and message.startswith("build-engines: ")
    for words in ("EfficientNMS_TRT", "--include-nms", "RUNTIME=tensorrt", "export.py", "--grid"):
        assert words in message, (words, message)
    assert not (tmp_path / "repository").exists()  # nothing half-written


def test_onnxruntime_nms_export_is_refused_on_every_runtime(tmp_path):
    for runtime in ("onnxruntime", "tensorrt"):
        done = build(tmp_path, runtime, ONNX="yolov7-narrow-e2e-ort-maxwh640.onnx")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "--max-wh" in done.stderr and "--grid" in done.stderr and "NMS" in done.stderr


@pytest.mark.parametrize("fixture,batch", [("yolov7-narrow-e2e-trt.onnx", (1, 1, 1)),
                                           ("yolov7-narrow-e2e-trt-dynbatch-simplify.onnx", (1, 8, 32)),
                                           ("yolov7-narrow-include-nms.onnx", (1, 1, 1)),
                                           ("yolov7-narrow-grid-dynbatch.onnx", (1, 8, 32))])
def test_what_tensorrt_would_get(fixture, batch, tmp_path):
    """RUNTIME=tensorrt, statically (no TensorRT here): the plan's config declares the outputs the file has, the
    postprocess reads them by their layout, the engine's batch profile ends at the config's max batch; and the build
    itself stops with the two ways to run it, no traceback."""
    from build import build_engines
    from yolo_triton import layouts
    from yolo_triton.repository import repository_files
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = FIXTURES / fixture
    spec = build_engines.spec_for_artifact(specs.get_spec(MODEL), path, "tensorrt")
    files = repository_files(spec, PRESETS["cpu"].replace(runtime="tensorrt"))
    detector = text_format.Parse(files[f"{MODEL}/config.pbtxt"], model_config_pb2.ModelConfig())
    assert detector.platform == "tensorrt_plan" and detector.max_batch_size == batch[2]
    declared = [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in detector.output]
    if "grid" in fixture and "e2e" not in fixture:
        assert declared == [("output", "TYPE_FP32", [25200, 85])]
    else:
        assert declared == [("num_dets", "TYPE_INT32", [1]), ("det_boxes", "TYPE_FP32", [100, 4]),
                            ("det_scores", "TYPE_FP32", [100]), ("det_classes", "TYPE_INT32", [100])]
    post = text_format.Parse(files[f"{MODEL}_postprocess/config.pbtxt"], model_config_pb2.ModelConfig())
    assert [i.name for i in post.input][:-1] == [o.name for o in detector.output]
    layouts.check_detector_outputs(spec.layout, layouts.detector_outputs(spec), spec.num_classes)
    args = build_engines.parse_args(["--runtime", "tensorrt", "--models", MODEL])
    builder = build_engines.builder_arguments(args, path, tmp_path / "model.plan", spec)
    at = builder.index("--batch")
    assert tuple(int(v) for v in builder[at + 1 : at + 4]) == batch
    done = build(tmp_path, "tensorrt", ONNX=fixture)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "TensorRT is not importable here" in done.stderr and "No plan was written" in done.stderr

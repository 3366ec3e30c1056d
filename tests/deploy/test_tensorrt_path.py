"""The TensorRT/NGC path, checked as far as it runs without TensorRT, a GPU or a docker engine.

What runs here: the plan's config.pbtxt against the ONNX it is built from (parsed with ``onnx``), the
end2end NMS graph surgery (the part before the TensorRT-only node runs in onnxruntime), the builder's settings,
the docker command lines against docs/tensorrt.md, and the clear failures when TensorRT or docker is missing.
What does not run here: building or serving a plan. No stand-in for TensorRT is used anywhere.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tritonclient.grpc import model_config_pb2

from yolo_triton import specs
from yolo_triton.serving import docker
from yolo_triton.placement import PRESETS
from yolo_triton.repository import detector_config

from ..helpers import FULL, RECT, SMALL, V4, V4_TINY

ROOT = Path(__file__).resolve().parents[2]
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def onnx_io(path):
    graph = onnx.load(str(path)).graph

    def describe(values):
        return {v.name: (ONNX_TO_TRITON[v.type.tensor_type.elem_type],
                         tuple(d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim[1:]))
                for v in values}
    return describe(graph.input), describe(graph.output)


def config_io(config):
    describe = lambda values: {v.name: (model_config_pb2.DataType.Name(v.data_type), tuple(v.dims)) for v in values}  # noqa: E731
    return config, describe(config.input), describe(config.output)


@pytest.fixture(scope="module")
def end2end_onnx(onnx_models, tmp_path_factory):
    from build import add_nms
    path = tmp_path_factory.mktemp("e2e") / "small-end2end.onnx"
    model = add_nms.add_efficient_nms(onnx.load(str(onnx_models[SMALL.name])), conf=0.3, iou=0.5, top_k=50)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("which", ["small", "full", "yolov4", "yolov4_tiny", "end2end", "rect"])
def test_plan_config_io_equals_the_onnx_io(which, onnx_models, end2end_onnx):
    from yolo_triton.models import onnx_import

    base = {"small": SMALL, "full": FULL, "yolov4": V4, "yolov4_tiny": V4_TINY, "end2end": SMALL, "rect": RECT}[which]
    path = end2end_onnx if which == "end2end" else onnx_models[base.name]
    info = onnx_import.inspect_onnx(path)
    onnx_import.check_for_runtime(info, "tensorrt")
    spec = onnx_import.spec_for_onnx(base, info)
    config, inputs, outputs = config_io(detector_config(spec, PRESETS["cpu"].replace(runtime="tensorrt")))
    onnx_inputs, onnx_outputs = onnx_io(path)
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert inputs == onnx_inputs and outputs == onnx_outputs
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)
    assert spec.layout == (specs.LAYOUT_EFFICIENT_NMS if which == "end2end" else specs.LAYOUT_RAW_GRID)
    # the engine's batch profile ends where the config's max_batch_size does
    from build import build_engine, build_engines
    args = build_engines.parse_args(["--runtime", "tensorrt", "--models", "yolov7"])
    builder_args = build_engines.builder_arguments(args, path, Path("model_repository/x/1/model.plan"), spec)
    batch = builder_args[builder_args.index("--batch") + 1 : builder_args.index("--batch") + 4]
    assert batch == ["1", "8", str(config.max_batch_size)]
    # rectangular inference: one optimisation profile per shape bucket in the plan, all of them the instances'
    if which == "rect":
        assert spec.rect and inputs[specs.DETECTOR_INPUT][1] == (3, -1, -1)
        shapes = builder_args[builder_args.index("--shapes") + 1 :]
        assert shapes == ["320x320", "256x320", "320x256", "192x320", "320x192"]
        assert list(config.instance_group[0].profile) == ["0", "1", "2", "3", "4"]
        settings = build_engine.settings_from_args(build_engine.parse_args(["--onnx", str(path), "--engine", "x.plan",
                                                                            *builder_args[4:]]))
        profiles = settings.profiles([-1, 3, -1, -1])
        assert profiles[3] == ((1, 3, 192, 320), (8, 3, 192, 320), (32, 3, 192, 320)) and len(profiles) == 5
    else:
        assert "--shapes" not in builder_args and not config.instance_group[0].profile


def test_end2end_graph_feeds_nms_the_official_boxes_and_scores(end2end_onnx, onnx_models):
    """Everything before the TensorRT-only node runs in onnxruntime: boxes = cx,cy,w,h; scores = obj × cls."""
    model = onnx.load(str(end2end_onnx))
    nms = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1 and nms[0].domain == "TRT"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nms[0].attribute}
    assert attrs["box_coding"] == 1 and attrs["max_output_boxes"] == 50 and abs(attrs["score_threshold"] - 0.3) < 1e-6
    assert abs(attrs["iou_threshold"] - 0.5) < 1e-6 and attrs["background_class"] == -1
    model.graph.node.remove(nms[0])
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in nms[0].input])
    x = np.random.default_rng(0).random((2, 3, *SMALL.input_size), dtype=np.float32)
    boxes, scores = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    raw = ort.InferenceSession(str(onnx_models[SMALL.name]), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_array_equal(boxes, raw[..., :4])
    np.testing.assert_allclose(scores, raw[..., 5:] * raw[..., 4:5], rtol=1e-6)


def test_end2end_onnx_is_refused_for_onnxruntime(end2end_onnx):
    from yolo_triton.models import onnx_import

    with pytest.raises(ValueError, match="tensorrt"):
        onnx_import.check_for_runtime(onnx_import.inspect_onnx(end2end_onnx), "onnxruntime")


def test_builder_settings():
    from build import build_engine
    settings = build_engine.BuildSettings()
    assert (settings.precision, settings.min_batch, settings.opt_batch, settings.max_batch) == ("fp16", 1, 8, 32)
    assert settings.profiles([-1, 3, 640, 640]) == [((1, 3, 640, 640), (8, 3, 640, 640), (32, 3, 640, 640))]
    with pytest.raises(ValueError, match="needs the shapes to build for"):
        settings.profiles([-1, 3, -1, -1])
    with pytest.raises(ValueError, match="dynamic height/width only"):
        build_engine.BuildSettings(shapes=((384, 640),)).profiles([-1, 3, 640, 640])
    with pytest.raises(ValueError, match="min <= opt <= max"):
        build_engine.BuildSettings(opt_batch=64)
    with pytest.raises(ValueError, match="precision"):
        build_engine.BuildSettings(precision="int4")
    with pytest.raises(ValueError, match="calib"):
        build_engine.BuildSettings(precision="int8")


def test_int8_calibration_batches_are_the_server_preprocess(tmp_path, photos):
    from yolo_triton.pipeline.preprocess import preprocess_image

    from build import build_engine
    names = ["astronaut_square_png", "rocket_jpg", "coffee_landscape_jpg"]
    for name in names:
        (tmp_path / f"{name}.{'png' if name.endswith('png') else 'jpg'}").write_bytes(photos[name])
    (tmp_path / "notes.txt").write_text("not an image")
    files = build_engine.calibration_files(tmp_path, limit=10)
    assert len(files) == 3
    batches = list(build_engine.calibration_batches(files, (320, 320), batch=2))
    assert len(batches) == 1 and batches[0].shape == (2, 3, 320, 320)  # the partial last batch is dropped
    np.testing.assert_array_equal(batches[0][1], preprocess_image(files[1].read_bytes(), (320, 320))[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        build_engine.calibration_files(tmp_path / "empty", limit=10)


def test_builder_without_tensorrt_fails_clearly_and_writes_no_plan(tmp_path, onnx_models):
    plan = tmp_path / "model.plan"
    done = subprocess.run([sys.executable, "-m", "build.build_engine", "--onnx", str(onnx_models[SMALL.name]),
                           "--engine", str(plan)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "TensorRT is not importable" in done.stderr and "docker" in done.stderr
    assert not plan.exists() and not list(tmp_path.iterdir())


def test_make_build_engines_tensorrt_without_tensorrt_or_docker_stops_clearly(tmp_path, onnx_models):
    env = {**os.environ, "ONNX_yolov7": str(onnx_models[FULL.name])}
    repository = tmp_path / "repo"
    done = subprocess.run([sys.executable, "-m", "build.build_engines", "--runtime", "tensorrt",
                           "--models", "yolov7", "--repository", str(repository), "--artifacts", str(tmp_path / "art")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0
    assert "TensorRT is not importable here" in done.stderr and "No plan was written" in done.stderr
    assert not list(repository.rglob("*.plan"))


def test_docker_command_lines_are_what_the_docs_say(tmp_path):
    versions = docker.ngc_versions()
    assert versions["TRITON_IMAGE"].endswith(f":{versions['NGC_RELEASE']}-py3")
    assert versions["TENSORRT_IMAGE"].endswith(f":{versions['NGC_RELEASE']}-py3")  # one release: same TensorRT
    plugin = tmp_path / "liblayerplugin.so"
    image, build = docker.server_image(versions)
    command = docker.docker_serve_command(Path("model_repository"), image, plugins=[plugin])
    assert "-it" not in command  # no terminal here (pytest): -it would make docker refuse to start
    section = (ROOT / "docs" / "tensorrt.md").read_text()
    readme_run = next(line for line in section.splitlines() if line.strip().startswith("docker run"))
    flags = " ".join(docker.DOCKER_RUN_FLAGS)
    assert flags in " ".join(command) and flags in readme_run
    assert "-e LD_PRELOAD=/plugins/0/liblayerplugin.so" in " ".join(command)
    assert command[-2:] == ["tritonserver", "--model-repository=/models"]
    for key in ("TRITON_IMAGE", "TENSORRT_IMAGE"):
        assert versions[key] in section
    assert build[:2] == ["docker", "build"] and f"TRITON_IMAGE={versions['TRITON_IMAGE']}" in build
    backend = docker.docker_serve_command(Path("model_repository"), image, plugins=[plugin], plugin_mode="backend-config")
    assert backend[-1] == "--backend-config=tensorrt,plugins=/plugins/0/liblayerplugin.so"
    inside = ROOT / "build" / "artifacts" / "yolov7.onnx"
    builder = docker.docker_build_engine_command(["--onnx", str(inside), "--plugin", str(plugin)], "img", user="1000:1000")
    assert builder[:7] == ["docker", "run", "--rm", "--gpus", "all", "--user", "1000:1000"]
    assert f"{plugin}:/mnt/input0/liblayerplugin.so:ro" in builder  # outside the checkout: mounted read-only
    assert builder[-8:] == ["img", "python3", "-m", "build.build_engine", "--onnx", "build/artifacts/yolov7.onnx",
                            "--plugin", "/mnt/input0/liblayerplugin.so"]
    assert re.search(r"--precision (fp16|int8|fp32)", section)

"""The committed model repository is exactly what the spec generates, and the configs agree with each other."""
from __future__ import annotations

from pathlib import Path

import pytest

from yolo_triton import specs
from yolo_triton.repository import repository_files, write_repository

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("spec", [specs.YOLOV7, specs.YOLOV4], ids=lambda s: s.name)
def test_committed_repository_is_generated_from_the_spec(tmp_path, spec):
    write_repository(tmp_path, [spec])
    for relative, text in repository_files(spec).items():
        committed = ROOT / "model_repository" / relative
        assert committed.exists(), f"{relative} missing: run `make repository`"
        assert committed.read_text() == (tmp_path / relative).read_text(), f"{relative} is stale: run `make repository`"


def test_detector_dims_follow_the_spec():
    spec = specs.YOLOV7.with_overrides(input_size=(256, 320))
    files = repository_files(spec)
    assert "dims: [ 3, 256, 320 ]" in files["yolov7/config.pbtxt"]
    # (256/8·320/8 + 256/16·320/16 + 256/32·320/32) · 3 anchors
    assert "dims: [ 5040, 85 ]" in files["yolov7/config.pbtxt"] and spec.num_candidates == 5040
    assert files["yolov7_postprocess/labels.txt"].splitlines() == list(specs.COCO80_NAMES)


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="multiple of the largest stride"):
        specs.YOLOV7.with_overrides(input_size=(250, 320))


def _groups(tmp_path, files, name):
    from yolo_triton.repository import read_model_config

    path = tmp_path / name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(files[f"{name}/config.pbtxt"])
    return [(g.count, g.kind, list(g.gpus)) for g in read_model_config(path).instance_group]


def test_gpu_placement_on_several_gpus(tmp_path):
    """Every GPU step gets ``gpu_instances`` instances on each listed GPU (Triton's schema parses it); the CPU twin's
    steps stay on the CPU; without ``gpus`` the group names none, so Triton uses every GPU it sees."""
    from tritonclient.grpc.model_config_pb2 import ModelInstanceGroup

    from yolo_triton.repository import Placement, read_model_config

    model_config_pb2_kind = ModelInstanceGroup.Kind.Value

    spec = specs.YOLOV7
    files = repository_files(spec, "torch", Placement(prepost="gpu", gpu=True, cpu_twin=True, gpu_instances=3, gpus=(0, 1),
                                                      gpu_queue_delay_us=750, torch_compile="off"))
    delay = lambda name: read_model_config(tmp_path / name / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds  # noqa: E731
    for name in (spec.preprocess_name, spec.name, spec.postprocess_name):
        assert _groups(tmp_path, files, name) == [(3, model_config_pb2_kind("KIND_GPU"), [0, 1])], name
        assert delay(name) == 750, name
    parameter = lambda name, key: read_model_config(tmp_path / name / "config.pbtxt").parameters[key].string_value  # noqa: E731
    assert parameter(spec.name, "torch_compile") == "off"
    for name in (spec.preprocess_name + "_cpu", spec.postprocess_name + "_cpu"):
        assert _groups(tmp_path, files, name)[0][1] == model_config_pb2_kind("KIND_CPU")
        assert delay(name) == spec.max_queue_delay_us, name
    every_gpu = repository_files(spec, "torch", Placement(prepost="gpu", gpu=True))
    # the library's default: 1 per GPU step on every GPU the server sees (the Makefile asks for 2, with MPS)
    assert _groups(tmp_path / "all", every_gpu, spec.name) == [(1, model_config_pb2_kind("KIND_GPU"), [])]
    assert parameter("all/" + spec.name, "torch_compile") == "default"  # the library's default too
    for bad in ({"gpu_instances": 0}, {"gpus": (0, 0)}, {"gpus": (-1,)}, {"gpu_queue_delay_us": -1},
                {"torch_compile": "reduce-overhead"}):
        with pytest.raises(ValueError):
            Placement(prepost="gpu", gpu=True, **bad)


def test_cuda_pool_on_every_visible_gpu():
    from yolo_triton.server import cuda_pool_flags

    assert cuda_pool_flags(256, gpu_count=2) == ["--cuda-memory-pool-byte-size=0:268435456",
                                                 "--cuda-memory-pool-byte-size=1:268435456"]
    assert cuda_pool_flags(256, gpu_count=0) == []

"""The generated model repository: Triton's schema reads it back as the spec says, the presets place the steps, and
what a build writes is ignored by git (a build never dirties the work tree)."""
from __future__ import annotations

import json
import subprocess

import pytest
from tritonclient.grpc.model_config_pb2 import DataType, ModelInstanceGroup

from yolo_triton import layouts, specs
from yolo_triton.placement import PRESETS, Placement
from yolo_triton.repository import CPU_TWIN_SUFFIX, read_model_config, repository_files, write_repository

from ..helpers import ROOT

KIND_CPU, KIND_GPU = ModelInstanceGroup.Kind.Value("KIND_CPU"), ModelInstanceGroup.Kind.Value("KIND_GPU")


def configs(tmp_path, spec, placement=PRESETS["cpu"]):
    """Model name → its config as Triton's schema parses the written file."""
    write_repository(tmp_path, [spec], placement)
    return {path.parent.name: read_model_config(path) for path in tmp_path.glob("*/config.pbtxt")}


def test_configs_follow_the_spec(tmp_path):
    spec = specs.YOLOV7.with_overrides(input_size=(256, 320))
    found = configs(tmp_path, spec)
    assert sorted(found) == sorted([spec.preprocess_name, spec.name, spec.postprocess_name, spec.ensemble_name])
    detector = found[spec.name]
    assert [(t.name, list(t.dims)) for t in detector.input] == [(specs.DETECTOR_INPUT, [3, 256, 320])]
    # (256/8·320/8 + 256/16·320/16 + 256/32·320/32) · 3 anchors, 4 box + objectness + 80 classes
    assert [(t.name, DataType.Name(t.data_type), list(t.dims)) for t in detector.output] == [
        (specs.DETECTOR_OUTPUT, "TYPE_FP32", [5040, 85])] and spec.num_candidates == 5040
    assert detector.backend == "python" and detector.parameters["onnx_file"].string_value == "model.onnx"
    assert list(detector.dynamic_batching.preferred_batch_size) == list(spec.preferred_batch_sizes)
    post = found[spec.postprocess_name]
    assert {p: post.parameters[p].string_value for p in ("layout", "conf_threshold", "iou_threshold", "max_detections")} \
        == {"layout": "raw_grid", "conf_threshold": "0.25", "iou_threshold": "0.45", "max_detections": "300"}
    assert [t.name for t in post.output] == list(specs.ENSEMBLE_OUTPUTS)
    steps = found[spec.ensemble_name].ensemble_scheduling.step
    assert [s.model_name for s in steps] == [spec.preprocess_name, spec.name, spec.postprocess_name]
    assert dict(steps[2].input_map) == {n: n for n in (specs.DETECTOR_OUTPUT, specs.LETTERBOX_META)}
    assert json.loads(post.parameters["labels"].string_value) == list(specs.COCO80_NAMES)


@pytest.mark.parametrize("layout", specs.LAYOUT_NAMES)
def test_every_layout_wires_the_detector_to_the_postprocess(tmp_path, layout):
    spec = specs.YOLOV7.with_overrides(layout=layout, input_size=(320, 320))
    found = configs(tmp_path, spec)
    names = [t.name for t in layouts.detector_outputs(spec)]
    assert [t.name for t in found[spec.name].output] == names
    assert [t.name for t in found[spec.postprocess_name].input] == [*names, specs.LETTERBOX_META]
    steps = found[spec.ensemble_name].ensemble_scheduling.step
    assert sorted(steps[1].output_map) == sorted(names) and sorted(steps[2].input_map) == sorted(names + [specs.LETTERBOX_META])


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="multiple of the largest stride"):
        specs.YOLOV7.with_overrides(input_size=(250, 320))


def test_gpu_preset_places_every_step_on_the_gpus(tmp_path):
    """Every GPU step gets ``gpu_instances`` instances on each listed GPU; the CPU twin's steps stay on the CPU;
    without ``gpus`` the group names none, so Triton uses every GPU it sees."""
    spec = specs.YOLOV7
    placement = PRESETS["gpu"].replace(cpu_twin=True, gpu_instances=3, gpus=(0, 1), gpu_queue_delay_us=750,
                                       torch_compile="off")
    found = configs(tmp_path / "several", spec, placement)
    for name in (spec.preprocess_name, spec.name, spec.postprocess_name):
        assert [(g.count, g.kind, list(g.gpus)) for g in found[name].instance_group] == [(3, KIND_GPU, [0, 1])], name
        assert found[name].dynamic_batching.max_queue_delay_microseconds == 750, name
    assert found[spec.name].parameters["torch_compile"].string_value == "off"
    for name in (spec.preprocess_name + CPU_TWIN_SUFFIX, spec.postprocess_name + CPU_TWIN_SUFFIX):
        assert found[name].instance_group[0].kind == KIND_CPU
        assert found[name].dynamic_batching.max_queue_delay_microseconds == spec.max_queue_delay_us, name
    # the preset as it stands: 2 instances per GPU step on every GPU the server sees, the detector compiled
    every_gpu = configs(tmp_path / "preset", spec, PRESETS["gpu"])
    assert [(g.count, g.kind, list(g.gpus)) for g in every_gpu[spec.name].instance_group] == [(2, KIND_GPU, [])]
    assert every_gpu[spec.name].parameters["torch_compile"].string_value == "default"
    assert spec.ensemble_name + CPU_TWIN_SUFFIX not in every_gpu  # the twin of the earlier build is gone
    for bad in ({"gpu_instances": 0}, {"gpus": (0, 0)}, {"gpus": (-1,)}, {"gpu_queue_delay_us": -1},
                {"torch_compile": "reduce-overhead"}, {"mps": "maybe"}, {"runtime": "openvino"}):
        with pytest.raises(ValueError):
            PRESETS["gpu"].replace(**bad)
    with pytest.raises(ValueError, match="GPU pre/post"):
        PRESETS["cpu"].replace(prepost="gpu")


def test_presets_are_complete_and_differ_where_they_should():
    cpu, gpu = PRESETS["cpu"], PRESETS["gpu"]
    assert isinstance(cpu, Placement) and isinstance(gpu, Placement)
    assert (cpu.runtime, cpu.prepost, cpu.mps, cpu.cuda_pool_mib) == ("onnxruntime", "cpu", "off", 0)
    assert (gpu.runtime, gpu.prepost, gpu.gpu, gpu.mps) == ("torch", "gpu", True, "auto") and gpu.cuda_pool_mib > 0


def test_what_a_build_writes_is_ignored_by_git():
    """Every file a build may write (every spec, both presets, the CPU twin, the detector artifacts, a TensorRT
    plan) lies where .gitignore keeps it out of `git status`."""
    paths = {"build/artifacts/yolov7.onnx", "build/artifacts/yolov7.pt", "build/admin-key"}
    for spec in specs.SPECS.values():
        for placement in (PRESETS["cpu"], PRESETS["gpu"].replace(cpu_twin=True),
                          PRESETS["cpu"].replace(runtime="tensorrt")):
            paths |= {f"model_repository/{relative}" for relative in repository_files(spec, placement)}
        paths |= {f"model_repository/{spec.name}/1/model.{ext}" for ext in ("onnx", "pt", "plan")}
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"], input="\n".join(sorted(paths)),
                          cwd=ROOT, capture_output=True, text=True)
    not_ignored = [line.split("\t")[-1] for line in done.stdout.splitlines() if line.startswith("::")]
    assert done.returncode in (0, 1) and not not_ignored, f"a build would dirty the work tree: {not_ignored}"


def test_cuda_pool_on_every_visible_gpu():
    from yolo_triton.serving.triton import cuda_pool_flags

    assert cuda_pool_flags(256, gpu_count=2) == ["--cuda-memory-pool-byte-size=0:268435456",
                                                 "--cuda-memory-pool-byte-size=1:268435456"]
    assert cuda_pool_flags(256, gpu_count=0) == []


def test_rect_configs_take_any_shape_and_families_without_it_refuse():
    """Rectangular inference: the detector and the preprocess say [3, -1, -1], the postprocess [-1, 85]; the preprocess
    carries the shape buckets (on the CPU and the GPU); the GPU preset's detector runs uncompiled (CUDA graphs per
    shape), the square one compiled; a darknet fit refuses it, with the reason."""
    from yolo_triton.repository import detector_config, postprocess_config, preprocess_config

    rect = specs.YOLOV7.with_overrides(rect=True)
    cpu = PRESETS["cpu"]
    assert list(detector_config(rect, cpu).input[0].dims) == [3, -1, -1]
    assert list(detector_config(rect, cpu).output[0].dims) == [-1, 85]
    assert list(postprocess_config(rect, cpu).input[0].dims) == [-1, 85]
    pre = preprocess_config(rect, cpu)
    assert list(pre.output[0].dims) == [3, -1, -1]
    assert pre.parameters["rect_buckets"].string_value == "640,640;480,640;640,480;384,640;640,384"
    assert list(detector_config(rect, cpu.replace(runtime="torch")).input[0].dims) == [3, -1, -1]  # eager, on the CPU
    gpu = PRESETS["gpu"]
    assert list(detector_config(rect, gpu).input[0].dims) == [3, -1, -1]
    assert detector_config(rect, gpu).parameters["torch_compile"].string_value == "off"
    assert detector_config(specs.YOLOV7, gpu).parameters["torch_compile"].string_value == gpu.torch_compile != "off"
    assert preprocess_config(rect, gpu).parameters["rect_buckets"].string_value == pre.parameters["rect_buckets"].string_value
    with pytest.raises(ValueError, match="square input_size"):
        specs.YOLOV4.with_overrides(rect=True)


def test_cuda_graph_buckets_are_the_batch_sizes_the_batcher_prefers():
    """The GPU detector captures a CUDA graph for each preferred batch size (and the largest batch); where the
    config prefers none — Triton then fills in max_batch_size alone — the powers of two, not one graph of 32."""
    from yolo_triton.pipeline.gpu_detector import graph_buckets

    assert graph_buckets([1, 2, 4, 8, 12, 16, 24], 32) == [1, 2, 4, 8, 12, 16, 24, 32]
    assert graph_buckets([32], 32) == graph_buckets([], 32) == [1, 2, 4, 8, 16, 32]
    assert graph_buckets([4, 64, 0], 16) == [4, 16]

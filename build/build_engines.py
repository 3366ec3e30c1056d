#!/usr/bin/env python3
"""`make build-engines`: the detector artifacts for a runtime, then the model repository that serves them.

For RUNTIME=onnxruntime each model's ONNX comes from one of (first that applies):

    ONNX_<model>=path.onnx      an ONNX the user exported already (official yolov7 export.py: raw --grid, or
                                --end2end which needs RUNTIME=tensorrt); inspected and checked, then used as is
    WEIGHTS_<model>=path        real weights: yolov7 .pt (official checkpoint, whose width, anchors and class names
                                the model takes; or our state dict), darknet .weights for yolov4 (with
                                CFG_<model>=yolov4.cfg, else the built-in cfg)
    (nothing)                   seeded RANDOM weights (--seed), loudly marked as such

LABELS_<model>=names.txt (one class name a line, as darknet's .names) gives the class names where the files do not
(an ONNX, a darknet model, a state dict); the default is the spec's COCO-80.

For RUNTIME=tensorrt that ONNX (optionally with NMS appended: --end2end, build/add_nms.py) is then built into
``<repository>/<model>/1/model.plan`` by build/build_engine.py — here if ``import tensorrt`` works, else in the
NGC TensorRT container (deploy/ngc.env) if docker with GPUs is available, else it stops with both options.

An artifact is rebuilt only when what it was built from changed (paths, sizes and times of the inputs, the
seed, the exporter's source); `make clean-artifacts` forces it. Every model's ONNX is inspected before the
repository is written, and the repository's configs follow from what the ONNX really is (input size, layout,
fixed or dynamic batch).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from yolo_triton import errors, specs
from yolo_triton.placement import DEVICES, PREPOST, PRESETS, RUNTIMES, TORCH_COMPILE_MODES, Placement
from yolo_triton.repository import AOT_FILE, COMPILE_CACHE_FILE, write_repository

REPO_ROOT = Path(__file__).resolve().parents[1]

# what an exported artifact depends on besides the user's files
EXPORTER_SOURCES = ("build/create_onnx.py", "yolo_triton/specs.py", "yolo_triton/models/yolov7.py",
                    "yolo_triton/models/yolov7_layers.py", "yolo_triton/models/darknet.py",
                    "yolo_triton/models/darknet_cfg.py", "yolo_triton/models/checkpoint.py",
                    "yolo_triton/models/torch_artifact.py")


def _file_state(path: Optional[str]) -> Optional[list]:
    if not path:
        return None
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise SystemExit(f"build-engines: {path} does not exist")
    stat = resolved.stat()
    return [str(resolved), stat.st_size, stat.st_mtime_ns]


def exporter_hash() -> str:
    digest = hashlib.sha256()
    for source in EXPORTER_SOURCES:
        path = REPO_ROOT / source
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def user_inputs(model: str, env: Dict[str, str]) -> Dict[str, Optional[str]]:
    return {key: env.get(f"{key}_{model}") or None for key in ("ONNX", "WEIGHTS", "CFG", "LABELS")}


def read_labels(path: str) -> tuple:
    """Class names, one a line (darknet's .names, a labels.txt); blank lines skipped."""
    _file_state(path)
    names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise SystemExit(f"build-engines: {path} holds no class names (one a line)")
    return names


def build_onnx(spec: specs.ModelSpec, artifacts: Path, seed: int, env: Dict[str, str]) -> Path:
    """The ONNX for ``spec``: the user's own, or exported from weights / a cfg / seeded random weights."""
    inputs = user_inputs(spec.name, env)
    if inputs["ONNX"]:
        _file_state(inputs["ONNX"])
        return Path(inputs["ONNX"]).resolve()
    output = artifacts / f"{spec.name}{'-rect' if spec.rect else ''}.onnx"
    torch_artifact = torch_artifact_path(output)
    stamp_path = output.with_suffix(".onnx.json")
    stamp = {
        "model": spec.name,
        "weights": _file_state(inputs["WEIGHTS"]),
        "cfg": _file_state(inputs["CFG"]),
        "labels": _file_state(inputs["LABELS"]),
        "seed": None if inputs["WEIGHTS"] else seed,
        "rect": spec.rect,
        "exporter": exporter_hash(),
    }
    if (output.exists() and torch_artifact.exists() and stamp_path.exists()
            and json.loads(stamp_path.read_text()) == stamp):
        print(f"{spec.name}: {output} is up to date")
        return output
    # the torch artifact (RUNTIME=torch) is written with the ONNX, from the same weights, every time
    command = [sys.executable, "-m", "build.create_onnx", "--model", spec.name, "--output", str(output),
               "--save-torch", str(torch_artifact)]
    if inputs["WEIGHTS"]:
        command += ["--weights", inputs["WEIGHTS"]]
    else:
        command += ["--seed", str(seed)]
    if inputs["LABELS"]:
        command += ["--labels", inputs["LABELS"]]
    if spec.rect:
        command += ["--rect"]
    if inputs["CFG"]:
        if spec.family != "yolov4":
            raise SystemExit(f"build-engines: CFG_{spec.name} given, but {spec.name} is not built from a darknet cfg")
        command += ["--cfg", inputs["CFG"]]
    print("+ " + " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
        raise SystemExit(f"build-engines: exporting {spec.name} failed")
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    return output


def torch_artifact_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".pt")


def spec_for_artifact(spec: specs.ModelSpec, onnx_path: Path, runtime: str,
                      labels_file: Optional[str] = None) -> specs.ModelSpec:
    """The spec as the ONNX really is (a user's file may differ in input size, layout or classes), checked for the
    runtime. Class names: ``labels_file``'s, else those our exporter wrote into the file, else the spec's."""
    from yolo_triton.models import onnx_import

    info = onnx_import.inspect_onnx(onnx_path)
    # RUNTIME=torch serves our modules, not this ONNX; it must still be a layout onnxruntime could run
    onnx_import.check_for_runtime(info, "onnxruntime" if runtime == "torch" else runtime)
    labels = read_labels(labels_file) if labels_file else None
    if labels is None and "labels" in info.metadata:
        labels = json.loads(info.metadata["labels"])
    if "fit" in info.metadata:  # our exporter's: how the network expects its images (a darknet cfg's letter_box)
        spec = spec.with_overrides(fit=info.metadata["fit"], pad_value=float(info.metadata["pad_value"]))
    return onnx_import.spec_for_onnx(spec, info, labels=labels)


def with_end2end_nms(onnx_path: Path, artifacts: Path, name: str, conf: float, iou: float, top_k: int) -> Path:
    from build.add_nms import add_efficient_nms

    import onnx

    output = artifacts / f"{name}-end2end.onnx"
    model = add_efficient_nms(onnx.load(str(onnx_path)), conf, iou, top_k)
    onnx.checker.check_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output))
    return output


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # ImportError, or PyPI's placeholder wheel raising at import
        return False
    return True


def builder_arguments(args: argparse.Namespace, onnx_path: Path, plan: Path, spec: specs.ModelSpec) -> list:
    """build/build_engine.py's arguments; the profile's max batch is the spec's max_batch_size (the config's)."""
    batch = [str(args.min_batch), str(min(args.opt_batch, spec.max_batch_size)), str(spec.max_batch_size)]
    command = ["--onnx", str(onnx_path), "--engine", str(plan), "--precision", args.precision, "--batch", *batch,
               "--workspace-mib", str(args.workspace_mib), "--timing-cache", str(args.artifacts / "trt" / "timing.cache")]
    if args.precision == "int8":
        command += ["--fit", spec.fit, "--pad-value", str(spec.pad_value)]  # calibrate on the model's own input
        if args.calib_images:
            command += ["--calib-images", str(args.calib_images)]
        command += ["--calib-cache", str(args.artifacts / "trt" / f"{spec.name}.calib")]
    if spec.rect:  # one optimisation profile per shape bucket; Triton picks the one a batch's shape fits
        command += ["--shapes", *(f"{h}x{w}" for h, w in spec.rect_buckets())]
    for plugin in spec.plugins:
        command += ["--plugin", plugin]
    return command


def build_plan(args: argparse.Namespace, spec: specs.ModelSpec, onnx_path: Path) -> Path:
    """The TensorRT plan for ``onnx_path``, here or in the NGC TensorRT container; never a half-written file."""
    plan = args.repository / spec.name / "1" / "model.plan"
    builder_args = builder_arguments(args, onnx_path, plan, spec)
    stamp_path = args.artifacts / "trt" / f"{spec.name}.plan.json"
    stamp = {"onnx": _file_state(str(onnx_path)), "args": builder_args}
    if plan.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        print(f"{spec.name}: {plan} is up to date")
        return plan
    calib_cache = args.artifacts / "trt" / f"{spec.name}.calib"
    if args.precision == "int8" and args.calib_images and calib_cache.exists():
        calib_cache.unlink()  # scales of another network or image set: calibrate again
    if tensorrt_available():
        command = [sys.executable, "-m", "build.build_engine", *builder_args]
    else:
        from yolo_triton.serving import docker

        why_not = docker.docker_status()
        if why_not:
            raise SystemExit(
                "build-engines RUNTIME=tensorrt: TensorRT is not importable here, and the NGC container cannot run "
                f"either: {why_not}.\nEither run `make build-engines RUNTIME=tensorrt` where `import tensorrt` works "
                "(e.g. inside nvcr.io/nvidia/tensorrt or nvcr.io/nvidia/pytorch), or install docker with the NVIDIA "
                "Container Toolkit. No plan was written."
            )
        for path in (onnx_path, plan, args.artifacts):
            if REPO_ROOT not in Path(path).resolve().parents:
                raise SystemExit(f"build-engines: {path} must lie inside {REPO_ROOT} to be built in the container")
        (args.artifacts / "trt").mkdir(parents=True, exist_ok=True)  # made by us, not by the container's user
        plan.parent.mkdir(parents=True, exist_ok=True)
        image, build_image = docker.builder_image()
        print("+ " + " ".join(build_image), flush=True)
        if subprocess.run(build_image).returncode != 0:
            raise SystemExit("build-engines: building the builder image failed")
        command = docker.docker_build_engine_command([str(Path(a).resolve()) if Path(a).exists() else a
                                                      for a in builder_args], image)
    print("+ " + " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
        raise SystemExit(f"build-engines: building the TensorRT plan for {spec.name} failed; no plan was written")
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    return plan


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(specs.DEFAULT_MODELS), choices=sorted(specs.SPECS))
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="the preset (yolo_triton/placement.py)")
    parser.add_argument("--runtime", choices=RUNTIMES, help="the detector's runtime (default: the preset's)")
    parser.add_argument("--artifacts", type=Path, default=Path("build/artifacts"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seed", type=int, default=0, help="of the random weights of a model given none")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODEL=PATH",
                        help="a plugin library the detector MODEL needs (repeatable); `make serve` preloads it")
    parser.add_argument("--fit", action="append", default=[], metavar="MODEL=FIT[:FILL]",
                        help="how MODEL's images are fitted to its input: letterbox (YOLOv7's), darknet (darknet's "
                             "letter_box=1), stretch; FILL on the 0..255 scale (e.g. yolov4=darknet:128 as tensorrtx); "
                             "default: the model's own (a darknet cfg's letter_box)")
    parser.add_argument("--rect", nargs="*", metavar="MODEL",
                        help="rectangular inference for these models (none named: every YOLOv7-family model asked for): "
                             "detect.py's letterbox(auto=True) onto the spec's shape buckets; RUNTIME=onnxruntime")
    parser.add_argument("--configs-only", action="store_true",
                        help="write the repository's configs from the specs, build no detector (`make repository`)")
    placement = parser.add_argument_group("the preset's fields, one by one (default: the preset's)")
    placement.add_argument("--prepost", choices=PREPOST, help="pre/post on the CPU or the GPU")
    placement.add_argument("--cpu-twin", action="store_true", default=None,
                           help="also <model>_e2e_cpu: CPU pre/post around the same detector")
    placement.add_argument("--gpu-instances", type=int, help="instances of each GPU step per GPU")
    placement.add_argument("--gpu-queue-delay-us", type=int, help="dynamic batcher delay of the GPU steps, microseconds")
    placement.add_argument("--torch-compile", choices=TORCH_COMPILE_MODES,
                           help="RUNTIME=torch on a GPU: the detector through torch.compile at load (off: load fast)")
    placement.add_argument("--gpus", help="GPU ids for the GPU steps, e.g. 0,1 (default: every GPU the server sees)")
    trt = parser.add_argument_group("RUNTIME=tensorrt")
    trt.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    trt.add_argument("--min-batch", type=int, default=1)
    trt.add_argument("--opt-batch", type=int, default=8)
    trt.add_argument("--workspace-mib", type=int, default=4096)
    trt.add_argument("--calib-images", type=Path, help="int8: folder of representative images")
    trt.add_argument("--end2end", action="store_true", help="NMS inside the engine (EfficientNMS_TRT)")
    trt.add_argument("--nms-conf", type=float, default=0.25)
    trt.add_argument("--nms-iou", type=float, default=0.45)
    trt.add_argument("--nms-top-k", type=int, default=100)
    return parser.parse_args(argv)


def placement_for(args: argparse.Namespace) -> Placement:
    gpus = tuple(int(g) for g in args.gpus.split(",") if g.strip()) if args.gpus else None
    placement = PRESETS[args.device].replace(
        runtime=args.runtime, prepost=args.prepost, cpu_twin=args.cpu_twin, gpu_instances=args.gpu_instances,
        gpus=gpus, gpu_queue_delay_us=args.gpu_queue_delay_us, torch_compile=args.torch_compile)
    if placement.runtime == "onnxruntime" and placement.gpu:
        raise SystemExit("build-engines: the onnxruntime detector runs on the CPU; on a GPU use RUNTIME=torch "
                         "(DEVICE=gpu's) or RUNTIME=tensorrt")
    return placement


def compile_ahead_of_time(args: argparse.Namespace, placement: Placement, spec: specs.ModelSpec,
                          torch_artifact: Path) -> None:
    """RUNTIME=torch on a GPU: the detector compiled here, once, as a TensorRT plan is built (build/compile_detector.py,
    AOTInductor) into the artifacts (``<model>.pt2``, what it was built with beside it), then copied into
    ``<repository>/<model>/1/model.pt2``, so that the server loads it instead of compiling at load. Where that fails,
    ``torch.compile``'s cache of the network compiled as the server compiles it (``<model>.compile-cache`` →
    ``model.compile-cache``), so that the server's compile at load finds it compiled. Each is rebuilt when the
    artifact, the mode, torch or the GPU changes; a failure is remembered for the same (delete its stamp to try
    again). Without a GPU here, or if both fail, the server compiles at load, and this says so."""
    import torch

    from yolo_triton.pipeline.gpu_detector import AOT_META_SUFFIX

    if not torch.cuda.is_available():
        print(f"{spec.name}: no CUDA GPU here, so nothing is compiled ahead of time: the server compiles the detector at "
              "load (minutes); `make build-engines DEVICE=gpu` on the GPU host compiles it once")
        return
    stamp = {"artifact": _file_state(str(torch_artifact)), "mode": placement.torch_compile, "half": placement.half,
             "max_batch": spec.max_batch_size, "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    version = args.repository / spec.name / "1"

    def build(what: str, suffix: str, name_in_repository: str, flags: List[str]) -> bool:
        artifact = args.artifacts / f"{spec.name}{suffix}"
        stamp_path = artifact.with_name(artifact.name + ".stamp.json")
        done = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
        failed = done.pop("failed", None)
        if done == stamp and failed:
            print(f"{spec.name}: {what} {failed} with this artifact, torch and GPU; not tried again "
                  f"(delete {stamp_path} to retry)")
            return False
        if done == stamp and artifact.exists():
            print(f"{spec.name}: {artifact} is up to date")
        else:
            command = [sys.executable, "-m", "build.compile_detector", "--torch-artifact", str(torch_artifact),
                       "--output", str(artifact), "--mode", placement.torch_compile, "--max-batch",
                       str(spec.max_batch_size), *([] if placement.half else ["--fp32"]), *flags]
            print("+ " + " ".join(command), flush=True)
            code = subprocess.run(command, cwd=REPO_ROOT).returncode
            if code != 0:
                # a negative code is a signal: a crash inside torch (AOTInductor's loader, say), not a Python error
                failed = f"crashed ({signal.Signals(-code).name})" if code < 0 else f"failed (exit status {code})"
                stamp_path.write_text(json.dumps({**stamp, "failed": failed}, indent=1) + "\n")
                print(f"{spec.name}: {what} {failed} (above)")
                return False
            stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
        for source in (artifact, artifact.with_name(artifact.name + AOT_META_SUFFIX)):
            target = version / source.name.replace(artifact.name, name_in_repository)
            shutil.copyfile(source, target.with_name(target.name + ".tmp"))
            target.with_name(target.name + ".tmp").replace(target)  # atomic: the server never sees a half-copied file
        return True

    for name in (AOT_FILE, COMPILE_CACHE_FILE):  # what an earlier build left: the server's choice is this build's
        for stale in (version / name, version / (name + AOT_META_SUFFIX)):
            stale.unlink(missing_ok=True)
    if build("compiling ahead of time (AOTInductor)", ".pt2", AOT_FILE, []):
        return
    if build("compiling torch.compile's cache instead", ".compile-cache", COMPILE_CACHE_FILE, ["--compile-cache"]):
        print(f"{spec.name}: the server compiles the detector at load from this cache")
    else:
        print(f"{spec.name}: the server compiles the detector at load, from scratch (minutes)")


def plugins_by_model(items) -> Dict[str, tuple]:
    plugins: Dict[str, tuple] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"build-engines: --plugin wants MODEL=PATH, got {item!r}")
        plugins[name] = plugins.get(name, ()) + (str(Path(path).resolve()),)
    return plugins


def fits_by_model(items) -> Dict[str, dict]:
    fits: Dict[str, dict] = {}
    for item in items:
        name, sep, value = item.partition("=")
        fit, _, fill = value.partition(":")
        if not sep or not name or not fit:
            raise SystemExit(f"build-engines: --fit wants MODEL=FIT[:FILL], got {item!r}")
        fits[name] = {"fit": fit, **({"pad_value": float(fill)} if fill else {})}
    return fits


def main(argv=None) -> int:
    args = parse_args(argv)
    placement = placement_for(args)
    plugins = plugins_by_model(args.plugin)
    fits = fits_by_model(args.fit)
    model_specs, onnx_files, torch_files = [], {}, {}
    for name in args.models:
        spec = specs.get_spec(name)
        if args.rect is not None and (name in args.rect or (not args.rect and spec.family == "yolov7")):
            spec = spec.with_overrides(rect=True)
        if name in plugins:
            spec = spec.with_overrides(plugins=plugins[name])
        if args.configs_only:
            model_specs.append(spec.with_overrides(**fits.get(name, {})))
            continue
        onnx_path = build_onnx(spec, args.artifacts, args.seed, dict(os.environ))
        if placement.runtime == "torch":
            if user_inputs(name, dict(os.environ))["ONNX"]:
                raise SystemExit(f"build-engines: RUNTIME=torch runs our PyTorch modules and needs weights "
                                 f"(WEIGHTS_{name}), not an ONNX (ONNX_{name})")
            torch_files[name] = torch_artifact_path(onnx_path)
        if placement.runtime == "tensorrt" and args.end2end:
            onnx_path = with_end2end_nms(onnx_path, args.artifacts, name, args.nms_conf, args.nms_iou, args.nms_top_k)
        rect = spec.rect
        spec = spec_for_artifact(spec, onnx_path, placement.runtime, user_inputs(name, dict(os.environ))["LABELS"])
        if rect and not spec.rect:
            print(f"{name}: the ONNX has a fixed input size, so it is served on the fixed square, not rectangular")
        if name in fits:
            spec = spec.with_overrides(**fits[name])
        if placement.runtime == "tensorrt":
            build_plan(args, spec, onnx_path)
        elif placement.runtime == "onnxruntime":
            onnx_files[name] = onnx_path
        model_specs.append(spec)
    write_repository(args.repository, model_specs, placement, onnx_files, torch_files)
    if placement.runtime == "torch" and placement.gpu and placement.torch_compile != "off" and not args.configs_only:
        for spec in model_specs:
            if spec.rect:
                print(f"{spec.name}: rectangular inference runs the network uncompiled, in CUDA graphs per shape "
                      "bucket: nothing to compile ahead of time")
                continue
            compile_ahead_of_time(args, placement, spec, torch_files[spec.name])
    print(f"repository {args.repository}: {', '.join(s.ensemble_name for s in model_specs)} (RUNTIME={placement.runtime}, "
          f"pre/post on the {placement.prepost.upper()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run(main, "build-engines"))

#!/usr/bin/env python3
"""Build stage 2: ONNX → TensorRT plan, with the TensorRT Python API (ONNX parser).

    python -m build.build_engine --onnx build/artifacts/yolov7.onnx --engine model_repository/yolov7/1/model.plan
    python -m build.build_engine --onnx ... --engine ... --precision int8 --calib-images photos/ --calib-cache build/artifacts/trt/yolov7.calib

Precision fp32 | fp16 (default) | int8 (entropy calibration over a folder of the user's images, preprocessed by
the same code as the server: yolo_triton.pipeline.preprocess); one dynamic-batch optimisation profile (min/opt/max,
default 1/8/32) — one per ``--shapes`` entry for an ONNX of dynamic height/width (rectangular inference); a timing cache kept under build/ so that rebuilds are fast; a workspace limit; progress shown.
The plan is written to a temporary name and renamed when complete: a failed build never leaves a plan behind.

TensorRT is not installable where this project is developed (no GPU; PyPI's tensorrt wheels are placeholders):
this file is checked statically and by the tests of what runs without TensorRT. It has not been run here.
Where TensorRT is missing, ``build/build_engines.py`` runs this same script in the NGC TensorRT container.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

LOGGER = logging.getLogger("yolo_triton.build_engine")

PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class TensorRTUnavailable(RuntimeError):
    """``import tensorrt`` failed: build inside the NGC TensorRT container instead (build/build_engines.py)."""


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as error:  # ImportError, or the PyPI placeholder wheel failing at import
        raise TensorRTUnavailable(
            f"TensorRT is not importable here ({error.__class__.__name__}: {error}). Either run where it is "
            "(an NGC TensorRT/PyTorch container, or `pip install tensorrt` from NVIDIA's index on a CUDA host), or "
            "let `make build-engines RUNTIME=tensorrt` run the builder in docker (needs docker with GPU access)."
        ) from None
    return trt


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """Everything that decides the plan besides the ONNX; the README and `make build-engines` document these."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 4096
    timing_cache: Optional[Path] = Path("build/artifacts/trt/timing.cache")
    plugins: Sequence[Path] = ()
    calib_images: Optional[Path] = None
    calib_cache: Optional[Path] = None
    calib_max_images: int = 512
    fit: str = "letterbox"  # how calibration images are fitted to the input: the model's own (boxes.Letterbox)
    pad_value: float = 114
    # an ONNX with dynamic height and width (rectangular inference): one optimisation profile per (h, w), the first
    # also the calibration's; empty for an input of a fixed size
    shapes: Sequence[Tuple[int, int]] = ()

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.precision == "int8" and self.calib_images is None and not (self.calib_cache and Path(self.calib_cache).exists()):
            raise ValueError("int8 needs --calib-images (a folder of your images) or an existing --calib-cache")

    def profiles(self, input_shape: Sequence[int]) -> List[tuple]:
        """(min, opt, max) shapes of each optimisation profile for an input [N, C, H, W] whose batch is dynamic: one
        profile for a fixed height and width, one per ``shapes`` entry for a dynamic one (Triton picks the profile
        that fits a batch's shape)."""
        channels, height, width = (int(d) for d in input_shape[1:])
        dynamic = height < 0 or width < 0
        if dynamic != bool(self.shapes):
            raise ValueError(f"input {list(input_shape)}: " + (
                "a dynamic height/width needs the shapes to build for (--shapes HxW ...; the spec's rect buckets)"
                if dynamic else "--shapes applies to an input of dynamic height/width only"))
        hws = self.shapes if dynamic else [(height, width)]
        return [tuple((batch, channels, h, w) for batch in (self.min_batch, self.opt_batch, self.max_batch))
                for h, w in hws]


def calibration_files(folder: Path, limit: int) -> List[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder} for INT8 calibration")
    return files[:limit]


def calibration_batches(files: Sequence[Path], input_hw, batch: int, pad_value: float = 114, fit: str = "letterbox"):
    """FP32 NCHW batches preprocessed exactly as the server preprocesses requests (decode, letterbox, scale)."""
    from yolo_triton.pipeline.preprocess import preprocess_image

    for start in range(0, len(files) - batch + 1, batch):  # a partial last batch is dropped: TensorRT wants full ones
        tensors = [preprocess_image(Path(f).read_bytes(), input_hw, pad_value, fit=fit)[0]
                   for f in files[start : start + batch]]
        yield np.ascontiguousarray(np.stack(tensors), dtype=np.float32)


def make_entropy_calibrator(trt, files: Sequence[Path], input_hw, batch: int, cache: Optional[Path],
                            pad_value: float = 114, fit: str = "letterbox"):
    """An ``IInt8EntropyCalibrator2`` over ``files``; device copies with cuda-python (as TensorRT's samples)."""
    from cuda import cudart  # cuda-python: in NGC containers, `pip install cuda-python` elsewhere

    def check(result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = calibration_batches(files, input_hw, batch, pad_value, fit)
            self.nbytes = batch * 3 * input_hw[0] * input_hw[1] * 4
            self.device = check(cudart.cudaMalloc(self.nbytes))
            self.done = 0

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            try:
                host = next(self.batches)
            except StopIteration:
                return None
            check(cudart.cudaMemcpy(self.device, host.ctypes.data, self.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            self.done += len(host)
            LOGGER.info("calibration: %d / %d images", self.done, len(files))
            return [int(self.device)]

        def read_calibration_cache(self):
            if cache and Path(cache).exists():
                LOGGER.info("using calibration cache %s", cache)
                return Path(cache).read_bytes()
            return None

        def write_calibration_cache(self, data):
            if cache:
                Path(cache).parent.mkdir(parents=True, exist_ok=True)
                Path(cache).write_bytes(bytes(data))

        def __del__(self):
            cudart.cudaFree(self.device)

    return EntropyCalibrator()


def make_progress_monitor(trt):
    """tqdm bars for TensorRT's build phases (IProgressMonitor, TensorRT >= 10)."""
    from tqdm import tqdm

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=parent_phase is None)

        def step_complete(self, phase_name, step):
            if phase_name in self.bars:
                self.bars[phase_name].update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return ProgressMonitor()


class EngineBuilder:
    """Parses an ONNX into a TensorRT network and builds a serialized plan (as TensorRT's efficientdet sample)."""

    def __init__(self, settings: BuildSettings, verbose: bool = False):
        self.trt = import_tensorrt()
        self.settings = settings
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.INFO)
        for plugin in settings.plugins:  # custom layers (e.g. a yolov4 plugin library) before parsing
            ctypes.CDLL(str(plugin), mode=ctypes.RTLD_GLOBAL)
        trt.init_libnvinfer_plugins(self.logger, "")  # EfficientNMS_TRT and the other built-in plugins
        self.builder = trt.Builder(self.logger)
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
        self.network = None
        self.parser = None

    def create_network(self, onnx_path: Path):
        trt = self.trt
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # needed before TensorRT 10, a no-op after
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        self.network = self.builder.create_network(flags)
        self.parser = trt.OnnxParser(self.network, self.logger)
        if not self.parser.parse_from_file(str(onnx_path)):
            errors = [str(self.parser.get_error(i)) for i in range(self.parser.num_errors)]
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}:\n" + "\n".join(errors))
        inputs = [self.network.get_input(i) for i in range(self.network.num_inputs)]
        if len(inputs) != 1:
            raise RuntimeError(f"{onnx_path}: expected one input, found {[t.name for t in inputs]}")
        self.input, self.profile = inputs[0], None
        for shapes in self.settings.profiles(inputs[0].shape):
            profile = self.builder.create_optimization_profile()
            profile.set_shape(inputs[0].name, *shapes)
            self.config.add_optimization_profile(profile)
            self.profile = self.profile or profile  # the first: the calibration's
            LOGGER.info("input %s profile min/opt/max %s", inputs[0].name, shapes)

    def _set_precision(self):
        trt, settings = self.trt, self.settings
        if settings.precision in ("fp16", "int8"):
            if not self.builder.platform_has_fast_fp16:
                LOGGER.warning("this GPU has no fast FP16; building with the FP16 flag anyway")
            self.config.set_flag(trt.BuilderFlag.FP16)
        if settings.precision == "int8":
            self.config.set_flag(trt.BuilderFlag.INT8)
            files = calibration_files(settings.calib_images, settings.calib_max_images) if settings.calib_images else []
            hw = self.settings.profiles(self.input.shape)[0][1][2:]  # the first profile's height and width
            # TensorRT calibrates at the profile's opt shape: the calibration batches must be exactly that size
            self.config.int8_calibrator = make_entropy_calibrator(trt, files, hw, settings.opt_batch, settings.calib_cache,
                                                                  settings.pad_value, settings.fit)
            self.config.set_calibration_profile(self.profile)

    def _load_timing_cache(self):
        path = self.settings.timing_cache
        data = Path(path).read_bytes() if path and Path(path).exists() else b""
        self.timing_cache = self.config.create_timing_cache(data)
        if not self.config.set_timing_cache(self.timing_cache, ignore_mismatch=False):
            LOGGER.warning("timing cache %s does not fit this TensorRT/GPU; building without it", path)

    def _save_timing_cache(self):
        path = self.settings.timing_cache
        if not path:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(bytes(self.config.get_timing_cache().serialize()))
        except Exception as error:  # the plan is written already; a cache that cannot be saved only costs time
            LOGGER.warning("could not save the timing cache %s: %s", path, error)

    def create_engine(self, engine_path: Path) -> Path:
        engine_path = Path(engine_path)
        self._set_precision()
        self._load_timing_cache()
        if hasattr(self.trt, "IProgressMonitor"):
            self.config.progress_monitor = make_progress_monitor(self.trt)
        serialized = self.builder.build_serialized_network(self.network, self.config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the engine (see the log above)")
        write_atomically(engine_path, bytes(serialized))
        self._save_timing_cache()
        LOGGER.info("wrote %s (%s, batch %d..%d)", engine_path, self.settings.precision, self.settings.min_batch, self.settings.max_batch)
        return engine_path


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp made it 0600: a tritonserver running as another user must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--engine", type=Path, required=True, help="plan to write (e.g. model_repository/yolov7/1/model.plan)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), default=(1, 8, 32))
    parser.add_argument("--workspace-mib", type=int, default=4096)
    parser.add_argument("--timing-cache", type=Path, default=Path("build/artifacts/trt/timing.cache"))
    parser.add_argument("--plugin", type=Path, action="append", default=[], help="plugin library to load (repeatable)")
    parser.add_argument("--calib-images", type=Path, help="int8: folder of representative images")
    parser.add_argument("--calib-cache", type=Path, help="int8: calibration cache to read/write")
    parser.add_argument("--calib-max-images", type=int, default=512)
    parser.add_argument("--fit", default="letterbox", help="how calibration images are fitted: the model's (boxes.FITS)")
    parser.add_argument("--pad-value", type=float, default=114, help="the fit's fill, 0..255")
    parser.add_argument("--shapes", nargs="+", default=[], metavar="HxW",
                        help="an ONNX of dynamic height/width: one optimisation profile per shape (rectangular inference)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    return BuildSettings(
        precision=args.precision, min_batch=args.batch[0], opt_batch=args.batch[1], max_batch=args.batch[2],
        workspace_mib=args.workspace_mib, timing_cache=args.timing_cache, plugins=tuple(args.plugin),
        calib_images=args.calib_images, calib_cache=args.calib_cache, calib_max_images=args.calib_max_images,
        fit=args.fit, pad_value=args.pad_value,
        shapes=tuple(tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes),
    )


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        builder = EngineBuilder(settings, verbose=args.verbose)
        builder.create_network(args.onnx)
        builder.create_engine(args.engine)
    except (TensorRTUnavailable, ValueError, RuntimeError) as error:
        LOGGER.error("%s", error)
        return 2 if isinstance(error, TensorRTUnavailable) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build stage for RUNTIME=torch on a GPU: the detector compiled ahead of time with AOTInductor, as a TensorRT plan is.

    python -m build.compile_detector --torch-artifact build/artifacts/yolov7.pt \
        --output model_repository/yolov7/1/model.pt2 [--mode default] [--max-batch 32] [--fp32]

The fused network of the torch artifact, in FP16 and channels_last on this machine's GPU, is exported with a
dynamic batch (1 to ``--max-batch``) and compiled by AOTInductor into one package (kernels and weights). Beside it,
``model.pt2.json`` records what it was built with (torch, GPU, compute capability, mode): the server loads the
package only on the same, and otherwise compiles at load and says why. `make build-engines DEVICE=gpu` runs this
for every model (rebuilt when the artifact, torch or the GPU changes); without a GPU here it is skipped, and the
server compiles at load.

    python -m build.compile_detector --compile-cache --torch-artifact build/artifacts/yolov7.pt \
        --output model_repository/yolov7/1/model.compile-cache [--mode default] [--max-batch 32] [--fp32]

Where AOTInductor's package fails (YOLOv7-640's loader crashes on torch 2.11, docs/gpu.md), the build's stand-in:
the network compiled by ``torch.compile`` and captured in CUDA graphs as the server does at load, and what that
compiled saved as torch.compiler's portable cache; the server's compile at load then finds it compiled.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from yolo_triton import errors
from yolo_triton.models.torch_artifact import load_torch_artifact
from yolo_triton.pipeline.gpu_detector import compile_ahead, prepare_for_gpu, warm_compile_cache
from yolo_triton.placement import TORCH_COMPILE_MODES

LOGGER = logging.getLogger("yolo_triton")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-artifact", type=Path, required=True, help="model.pt of build.create_onnx --save-torch")
    parser.add_argument("--output", type=Path, required=True,
                        help="the package to write (model.pt2), or with --compile-cache the cache (model.compile-cache)")
    parser.add_argument("--compile-cache", action="store_true",
                        help="torch.compile's cache of the network compiled as the server does, not an AOTInductor package")
    parser.add_argument("--mode", choices=[m for m in TORCH_COMPILE_MODES if m != "off"], default="default")
    parser.add_argument("--max-batch", type=int, default=32, help="the largest batch (the config's max_batch_size)")
    parser.add_argument("--fp32", action="store_true", help="FP32 instead of FP16 (the placement's half=false)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise ValueError("no CUDA GPU here: compile the detector on the GPU host that serves it (or let the server "
                         "compile it at load)")
    device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.float32 if args.fp32 else torch.float16
    model, spec = load_torch_artifact(args.torch_artifact)
    started = time.perf_counter()
    build = warm_compile_cache if args.compile_cache else compile_ahead
    build(prepare_for_gpu(model, device, dtype), (3, *spec.input_size), args.max_batch, device, dtype, args.mode,
          args.output)
    LOGGER.info("wrote %s (%s, batch 1-%d, %s, %s) in %.0f s", args.output, spec.name, args.max_batch,
                str(dtype).replace("torch.", ""), torch.cuda.get_device_name(device), time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run(main, "compile_detector"))

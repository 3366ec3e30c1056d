#!/usr/bin/env python3
"""Each GPU step alone, outside Triton: what the bare work costs, to set against Triton's per-model statistics.

    python -m tools.gpu_profile --out build/gpu_profile        (a CUDA host with torchvision: the GPU machine)

Times (median of ``--repeats`` after warm-up, CUDA-synchronised) per batch size, for YOLOv7-640 with seeded
random weights and photos from the scikit-image wheel as 640×480 JPEGs: decode (nvJPEG, one call per batch),
preprocess (decode + letterbox into one FP16 batch), detector (FP16, channels_last, CUDA graph per bucket),
postprocess (thresholds + NMS on the detector's output, boxes to the host). Writes gpu_profile.json.

``--nvimgcodec`` also times NVIDIA's nvImageCodec batch decoder (``nvidia-nvimgcodec-cu13`` with ``nvidia-nvjpeg``,
not dependencies: carry their wheels to the GPU machine, install them with ``pip --target``, put that folder on
PYTHONPATH and its ``nvidia/cu13/lib`` on LD_LIBRARY_PATH) on the same JPEGs, images landing as CUDA tensors like
torchvision's, and reports the largest pixel difference between the two decoders; where it cannot load, the reason
is recorded.

``--compile default|max-autotune-no-cudagraphs`` puts the detector through ``torch.compile`` (Inductor fuses the
activations and concatenations around cuDNN's convolutions) before the CUDA graphs are captured, and records the
set-up time and the largest difference from the uncompiled detector; ``--steps detector`` times that step alone.

``--trace`` also runs each step a few times under ``torch.profiler`` and writes ``gpu_trace.txt``: per step and batch,
the host's milliseconds per call beside the GPU kernels' (what a step spends launching and waiting rather than
computing), and the operators that take the most host time. Each postprocess row records how many grid rows per
image pass the objectness threshold (what the thresholds and NMS then work on).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


import torch

from yolo_triton import specs
from yolo_triton.pipeline import gpu_detector as gpu_det, gpu_postprocess as gpu_post, gpu_preprocess as gpu_pre
from yolo_triton.specs import DetectionParams
from yolo_triton.placement import TORCH_COMPILE_MODES


def timed(function, repeats: int) -> float:
    """Median milliseconds of ``function()`` with the GPU synchronised around each call."""
    for _ in range(3):
        function()
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def traced(function, calls: int = 5) -> str:
    """``function()`` run ``calls`` times under torch.profiler (after warm-up): host and GPU-kernel milliseconds per
    call, then the operators by host time."""
    from torch.profiler import ProfilerActivity, profile, schedule

    for _ in range(3):
        function()
    torch.cuda.synchronize()
    # one call profiled but not kept first: the profiler's own start (CUPTI's buffers, milliseconds) is not the step's
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 schedule=schedule(wait=0, warmup=1, active=calls, repeat=1)) as prof:
        function()
        torch.cuda.synchronize()
        prof.step()
        started = time.perf_counter()
        for _ in range(calls):
            function()
            torch.cuda.synchronize()  # each call's kernels inside its own step
            prof.step()
        host_ms = (time.perf_counter() - started) * 1000 / calls
    events = prof.key_averages()
    kernels_ms = sum(getattr(e, "self_device_time_total", 0) for e in events
                     if str(getattr(e, "device_type", "")).endswith("CUDA")) / 1000 / calls
    table = events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60)
    return f"{host_ms:.3f} ms per call on the host (profiled), {kernels_ms:.3f} ms of GPU kernels per call\n{table}"


def nvimgcodec_decode():
    """A function decoding a list of JPEG bytes to HWC uint8 CUDA tensors with nvImageCodec, or the reason why not."""
    try:
        from nvidia import nvimgcodec

        decoder = nvimgcodec.Decoder()

        def decode(items):
            images = decoder.decode(list(items))
            if any(image is None for image in images):
                raise RuntimeError("nvImageCodec returned no image for some inputs")
            return [torch.as_tensor(image, device="cuda") for image in images]

        from tools.bench import resized_jpegs

        decode(resized_jpegs((640, 480))[:2])  # a missing nvJPEG library may show only at the first decode
    except Exception as error:  # not installed, or its CUDA libraries not found: say which
        return None, f"{type(error).__name__}: {error}"
    return decode, None


# postprocess_on_gpu: the postprocess made to take the GPU's way (thresholds and NMS on the GPU), as a threshold
# near 0 does, beside the host's way that a usual threshold takes
STEPS = ("decode", "preprocess", "detector", "postprocess", "postprocess_on_gpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("build/gpu_profile"))
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="which steps to time")
    parser.add_argument("--nvimgcodec", action="store_true", help="also time nvImageCodec's decoder")
    parser.add_argument("--compile", default="off", choices=TORCH_COMPILE_MODES,
                        help="the detector through torch.compile (Inductor) before its CUDA graphs are captured; its "
                             "output is compared with the uncompiled detector's")
    parser.add_argument("--trace", action="store_true", help="also profile each step (torch.profiler): gpu_trace.txt")
    parser.add_argument("--cudnn-autotune", action="store_true",
                        help="cuDNN's autotuning (benchmark mode) on for the detector, which prepare_for_gpu leaves off")
    parser.add_argument("--compile-cache", type=Path,
                        help="seed torch.compile's caches from the build's compile cache first, as the server does "
                             "(for a set-up time like the server's: run with an empty TORCHINDUCTOR_CACHE_DIR)")
    args = parser.parse_args(argv)
    import importlib.util

    from tools.bench import resized_jpegs  # the same photos as `make bench`

    loader = importlib.util.spec_from_file_location("create_onnx", Path(__file__).resolve().parent.parent / "build" / "create_onnx.py")
    create_onnx = importlib.util.module_from_spec(loader)
    sys.modules["create_onnx"] = create_onnx
    loader.loader.exec_module(create_onnx)

    device, spec = torch.device("cuda"), specs.YOLOV7
    model, _ = create_onnx.build_detector(spec, None, seed=0)
    model.fuse()
    model = gpu_det.prepare_for_gpu(model, device, torch.float16)
    torch.backends.cudnn.benchmark = args.cudnn_autotune
    input_chw = (3, *spec.input_size)
    started = time.perf_counter()
    if args.compile_cache:
        why_not = gpu_det.load_compile_cache(args.compile_cache, gpu_det.compile_identity(
            device, torch.float16, input_chw, max(args.batches), args.compile))
        print(f"compile cache: {why_not or 'loaded'}", flush=True)
    runner = gpu_det.GraphRunner(gpu_det.compile_detector(model, args.compile), input_chw,
                                 max(args.batches), device, torch.float16, buckets=args.batches)
    setup_s = time.perf_counter() - started
    setup = {"s": round(setup_s, 2), **{k: round(v, 2) for k, v in runner.seconds.items()},
             "compiling": {k: round(v, 2) for k, v in gpu_det.compile_seconds().items()},
             "first_runs_by_batch": {size: round(s, 2) for (_, size), s in runner.run_seconds.items()}}
    print(f"detector ready in {setup_s:.1f} s (torch.compile: {args.compile}; cuDNN autotuning "
          f"{'on' if args.cudnn_autotune else 'off'}; CUDA graphs for {runner.buckets}): {json.dumps(setup)}", flush=True)
    photos = resized_jpegs((640, 480))
    params = DetectionParams(spec.conf_threshold, spec.iou_threshold, spec.max_detections)
    rows, traces = [], []

    def on_gpu(predictions, metas, params):
        host_rows, gpu_post.HOST_ROWS_PER_IMAGE = gpu_post.HOST_ROWS_PER_IMAGE, 0
        try:
            return gpu_post.postprocess_batch(predictions, metas, params)
        finally:
            gpu_post.HOST_ROWS_PER_IMAGE = host_rows

    nvimgcodec, nvimgcodec_error = nvimgcodec_decode() if args.nvimgcodec else (None, "not asked for")
    with torch.inference_mode():
        for batch in args.batches:
            items = [photos[i % len(photos)] for i in range(batch)]
            tensor, metas, _ = gpu_pre.preprocess_batch(items, spec.input_size, device, dtype=torch.float16)
            predictions = runner(tensor)
            row = {"batch": batch}
            if args.compile != "off":  # same input through the uncompiled network, eager
                eager = model(tensor.contiguous(memory_format=torch.channels_last)).float()
                row["compiled_max_abs_diff_over_max"] = float((predictions - eager).abs().max() / eager.abs().max())
            timings = {
                "decode": lambda: gpu_pre.decode_images(items, device),
                "preprocess": lambda: gpu_pre.preprocess_batch(items, spec.input_size, device, dtype=torch.float16),
                "detector": lambda: runner(tensor),
                "postprocess": lambda: gpu_post.postprocess_batch(predictions, metas, [params] * batch),
                "postprocess_on_gpu": lambda: on_gpu(predictions, metas, [params] * batch),
            }
            for step in args.steps:
                row[f"{step}_ms"] = timed(timings[step], args.repeats)
                if args.trace:
                    traces.append(f"=== {step}, batch {batch}: {traced(timings[step])}")
            if {"postprocess", "postprocess_on_gpu"} & set(args.steps):
                passing = predictions[..., 4] > params.conf_threshold
                row["objectness_passing_per_image"] = round(float(passing.sum()) / batch, 1)
            if nvimgcodec is not None:
                ours = [image.permute(1, 2, 0) for image in gpu_pre.decode_images(items, device)]  # CHW -> HWC
                theirs = nvimgcodec(items)
                row["nvimgcodec_max_level_difference"] = max(
                    int((a.int() - b.int()).abs().max()) for a, b in zip(ours, theirs))
                row["nvimgcodec_decode_ms"] = timed(lambda: nvimgcodec(items), args.repeats)
            row.update({f"{k[:-3]}_img_s": round(batch / row[k] * 1000, 1) for k in list(row) if k.endswith("_ms")})
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if traces:
        (args.out / "gpu_trace.txt").write_text("\n\n".join(traces) + "\n")
    (args.out / "gpu_profile.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "compile": args.compile,
        "cudnn_autotune": args.cudnn_autotune, "detector_setup": setup, "rows": rows, "nvimgcodec": nvimgcodec_error or "measured"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""`make bench`: one server, one run, four configurations, a concurrency sweep — where the time goes.

    python -m tools.bench -u localhost:8001 -m yolov7 [--concurrency 1 4 16 64] [--sizes 640x480 1280x720 1920x1080]

  (a) detector alone, input tensors through shared memory (CUDA shared memory on a GPU host, system shared
      memory otherwise) — the ceiling the ensemble is measured against;
  (b) the ensemble ``<model>_e2e``, real JPEG bytes over plain gRPC (GPU pre/post when built so);
  (c) ``<model>_e2e_cpu``, the same detector with CPU pre/post (if the repository has it: --cpu-twin);
  (d) the seed's architecture: the client letterboxes and sends the FP32 tensor over plain gRPC to the detector;
  (e) the bare detector, in this process on the same GPU (a CUDA host): the served network exactly as the server
      runs it (ahead-of-time package or torch.compile, CUDA graphs), batch after batch, no Triton — the ceiling.

JPEGs: photos from the scikit-image wheel resized to each ``--sizes`` entry, or ``mixed``: as they are, 427–741
pixels wide, and one at 1920×1280 (Pillow, quality 90). Prints a table and the ratios (b)/(a), (b)/(d), (b)/(e)
best against best and at each concurrency, and p50 at concurrency 1; writes bench.csv,
bench.json and bench.png under --out. Triton's per-model statistics (queue, compute input/infer/output for every
composing model) are saved to stats.json after the run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm


from tools import perf  # perf_analyzer runner, input data, plot

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


MIXED = "mixed"  # --sizes mixed: the photos at their own sizes (512², 741×500, 600×400, …) and one at 1920×1280


def resized_jpegs(size, quality=90) -> list:
    """The photos resized to ``size`` (w, h), or as they are plus a 1920×1280 one for ``MIXED``; JPEG (Pillow)."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    images = [Image.open(folder / name).convert("RGB") for name in PHOTOS]
    if size == MIXED:
        images.append(images[0].resize((1920, 1280), Image.BILINEAR))
    else:
        images = [image.resize(size, Image.BILINEAR) for image in images]
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def server_statistics(url: str) -> dict:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url).get_inference_statistics(as_json=True)


def has_model(url: str, name: str) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        return grpcclient.InferenceServerClient(url).is_model_ready(name)
    except Exception:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-u", "--url", default="localhost:8001")
    parser.add_argument("-m", "--model", default="yolov7",
                        help="the detector (or its ensemble MODEL_e2e); the ensembles are MODEL_e2e, MODEL_e2e_cpu")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"])
    parser.add_argument("--shared-memory", choices=["cuda", "system"], default=None,
                        help="(a)'s transport; default cuda when torch sees a GPU, else system")
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--stability", type=int, default=20)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d", "e"])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="(e): where the served detector's files are (MODEL/1/model.pt, model.pt2)")
    parser.add_argument("--compile", default="default", help="(e): the torch.compile mode where no package fits")
    parser.add_argument("--bare-batches", type=int, nargs="+", default=[1, 8, 16, 32], help="(e): batch sizes")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    args = parser.parse_args(argv)
    args.model = args.model.removesuffix("_e2e")  # `make bench MODEL=yolov7_e2e` names the ensemble
    args.protocol = "grpc"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.shared_memory is None:
        import torch

        args.shared_memory = "cuda" if torch.cuda.is_available() else "system"

    hw, input_dtype = perf.detector_input(args.url, "grpc", args.model)
    sizes = [s if s == MIXED else tuple(int(v) for v in s.split("x")) for s in args.sizes]
    output_bytes = int(np.prod(perf_output_dims(args.url, args.model))) * 4
    plan = []  # (case, label, model, data file or None, extra flags)
    if "a" not in args.skip:
        plan.append(("a", f"(a) detector alone, {args.shared_memory} shared memory", args.model, None,
                     ["--shared-memory", args.shared_memory, "--output-shared-memory-size", str(output_bytes)]))
    for size in sizes:
        name = size if size == MIXED else "x".join(map(str, size))
        data_file = args.out / f"jpeg_{name}.json"
        data_file.write_text(json.dumps(perf.input_data_json(resized_jpegs(size))))
        if "b" not in args.skip:
            plan.append(("b", f"(b) ensemble {name} JPEG", f"{args.model}_e2e", data_file, []))
        if "c" not in args.skip and has_model(args.url, f"{args.model}_e2e_cpu"):
            plan.append(("c", f"(c) ensemble, CPU pre/post, {name} JPEG", f"{args.model}_e2e_cpu", data_file, []))
    if "d" not in args.skip:
        data_file = args.out / "tensors.json"
        data_file.write_text(json.dumps(perf.tensor_data_json(resized_jpegs(sizes[0] if sizes[0] != MIXED else (640, 480)),
                                                              hw, dtype=input_dtype)))
        plan.append(("d", f"(d) seed: client preprocess, {input_dtype.name} tensor over gRPC", args.model, data_file, []))

    rows, failures, skipped = [], [], []
    if "e" in args.skip or not torch_cuda():
        skipped.append({"case": "e", "why": "skipped" if "e" in args.skip else "no CUDA GPU in this process"})
    else:
        try:
            rows += bare_detector(args)
        except RuntimeError as error:
            failures.append({"case": "e", "config": "(e) bare detector", "concurrency": None, "error": str(error)})
    points = [(p, c) for p in plan for c in args.concurrency]
    for (case, label, model, data_file, extra), c in tqdm(points, desc="bench"):
        try:
            row = perf.run_point(args, model, c, data_file, args.out / f"pa_{case}_{model}_{len(rows)}.csv", extra)
            rows.append({"case": case, "config": label, **row})
        except RuntimeError as error:  # one configuration failing does not lose the others' numbers
            tqdm.write(f"{label} at concurrency {c} failed: {str(error)[-1500:]}", file=sys.stderr)
            failures.append({"case": case, "config": label, "concurrency": c, "error": str(error)[-3000:]})
        write_report(args, rows, failures, skipped)  # after every point: a run cut short still leaves its numbers
    (args.out / "stats.json").write_text(json.dumps(server_statistics(args.url), indent=1))
    ratios = write_report(args, rows, failures, skipped)
    if rows:
        perf.plot(rows, args.out / "bench.png", f"{args.model}: detector alone vs ensembles vs client preprocessing")
    print(f"{'config':<52} {'conc':>5} {'img/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs (a)':>7} {'vs (d)':>7}")
    for r in rows:
        fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
        print(f"{r['config']:<52} {r['concurrency']:>5} {r['throughput_img_s']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
              f" {fmt(r['ratio_to_a']):>7} {fmt(r['ratio_to_d']):>7}")
    for f in failures:
        print(f"NOT MEASURED: {f['config']} at concurrency {f['concurrency']}: ..." + f["error"][-400:].replace("\n", " | "))
    print("ratios:", json.dumps(ratios))
    print(f"wrote {args.out}/bench.csv, bench.json, bench.png, stats.json")
    return 0 if rows else 1


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def write_report(args, rows, failures, skipped=()) -> dict:
    """Ratios to (a) and (d) at the same concurrency, best-vs-best ratios, p50 at the lowest concurrency;
    bench.csv and bench.json (with the points that failed and why, so a missing row is never silent).
    Returns the ratios."""
    best = lambda case: max((r["throughput_img_s"] for r in rows if r["case"] == case), default=None)  # noqa: E731
    for r in rows:
        same_c = {x["case"]: x for x in rows if x["concurrency"] == r["concurrency"] and x["case"] in ("a", "d")}
        r["ratio_to_a"] = round(r["throughput_img_s"] / same_c["a"]["throughput_img_s"], 3) if "a" in same_c else None
        r["ratio_to_d"] = round(r["throughput_img_s"] / same_c["d"]["throughput_img_s"], 3) if "d" in same_c else None
    ratios = {}
    if best("a") and best("b"):
        ratios["best_b_over_best_a"] = round(best("b") / best("a"), 3)
    if best("d") and best("b"):
        ratios["best_b_over_best_d"] = round(best("b") / best("d"), 3)
    if best("e") and best("b"):
        ratios["best_b_over_best_e"] = round(best("b") / best("e"), 3)
    low = min(args.concurrency)
    p50_low = {r["config"]: r["p50_ms"] for r in rows if r["concurrency"] == low}
    with open(args.out / "bench.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(key for r in rows for key in r)) or ["case"]  # (e) rows carry other keys
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "bench.json").write_text(json.dumps({"model": args.model, "url": args.url, "rows": rows, "ratios": ratios,
                                                     f"p50_ms_at_concurrency_{low}": p50_low,
                                                     "failures": failures, "skipped": list(skipped)}, indent=2))
    return ratios


def bare_detector(args) -> list:
    """(e) the ceiling: the served detector — the same artifact, ahead-of-time package or torch.compile (from the
    build's compile cache where there is one), CUDA graphs (``gpu_detector.detector_runner``, as the server runs
    it) — called in this process on the same GPU, one batch after another, no Triton. One row per batch size:
    img/s and the median latency of a batch."""
    import time

    import torch

    from yolo_triton.models.torch_artifact import load_torch_artifact
    from yolo_triton.pipeline.gpu_detector import detector_runner, prepare_for_gpu
    from yolo_triton.repository import AOT_FILE, COMPILE_CACHE_FILE

    folder = args.repository / args.model / "1"
    if not torch.cuda.is_available() or not (folder / "model.pt").exists():
        raise RuntimeError(f"needs a CUDA GPU and {folder / 'model.pt'} (a RUNTIME=torch build)")
    device, dtype = torch.device("cuda"), torch.float16
    model, spec = load_torch_artifact(folder / "model.pt")
    model = prepare_for_gpu(model, device, dtype)
    shape = (3, *spec.input_size)
    runner, how = detector_runner(model, shape, spec.max_batch_size, device, dtype, args.compile, folder / AOT_FILE,
                                  lambda message, _warn: tqdm.write(f"(e) {message}", file=sys.stderr),
                                  folder / COMPILE_CACHE_FILE)
    rows = []
    for batch in [b for b in runner.buckets if b in args.bare_batches]:
        images = torch.rand((batch, *shape), device=device, dtype=dtype)
        times = []
        with torch.inference_mode():
            for _ in range(5):
                runner(images)
            torch.cuda.synchronize()
            deadline = time.perf_counter() + args.measurement_ms / 1000
            while time.perf_counter() < deadline or len(times) < 20:
                started = time.perf_counter()
                runner(images)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        rows.append({"case": "e", "config": f"(e) bare detector ({how}), in-process", "concurrency": batch,
                     "batch": batch, "throughput_img_s": round(batch * len(times) / sum(times), 1),
                     "p50_ms": round(float(np.median(times)) * 1e3, 3), "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3)})
    del runner
    torch.cuda.empty_cache()
    return rows


def perf_output_dims(url: str, model: str):
    import tritonclient.grpc as grpcclient

    config = grpcclient.InferenceServerClient(url).get_model_config(model, as_json=True)["config"]
    return [int(d) for d in config["output"][0]["dims"]]


if __name__ == "__main__":
    raise SystemExit(main())

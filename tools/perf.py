#!/usr/bin/env python3
"""perf_analyzer against the ensemble with real JPEG bytes, over a concurrency sweep (`make perf`).

    python -m tools.perf [-u localhost:8001] [-m yolov7_e2e] [--concurrency 1 2 4 8] [--out build/perf]

In the same run it measures the baseline this project replaces — the seed's architecture: the client
letterboxes the photo itself and sends the FP32 tensor over gRPC straight to the detector — and reports the
ensemble's throughput as a ratio of it. Writes <out>/perf.csv, perf.json and perf.png (throughput and p50/p99
latency against concurrency for both), and prints a table. The input data are photos from the scikit-image wheel re-encoded as JPEG; for a BYTES tensor
perf_analyzer wants each element base64-encoded *with* Triton's 4-byte little-endian length prefix.
"""
from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm


from yolo_triton import specs
from yolo_triton.pipeline.preprocess import preprocess_image

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def photo_jpegs(names=PHOTOS, quality=90) -> list:
    import cv2
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    encoded = []
    for name in names:
        ok, buffer = cv2.imencode(".jpg", cv2.imread(str(folder / name), cv2.IMREAD_COLOR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, name
        encoded.append(buffer.tobytes())
    return encoded


def input_data_json(images: list, input_name: str = specs.ENSEMBLE_INPUT) -> dict:
    """perf_analyzer --input-data: one entry per image; the b64 content carries the 4-byte length prefix."""
    return {
        "data": [
            {input_name: {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode(), "shape": [1]}}
            for image in images
        ]
    }


def tensor_data_json(images: list, target_hw, input_name: str = specs.DETECTOR_INPUT, dtype=np.float32) -> dict:
    """The baseline's input: each photo letterboxed on the client, sent as raw tensors of the detector's input type
    (b64 of the bytes)."""
    tensors = [preprocess_image(image, target_hw)[0].astype(dtype) for image in images]
    return {"data": [{input_name: {"b64": base64.b64encode(t.tobytes()).decode(), "shape": list(t.shape)}} for t in tensors]}


def detector_input(url: str, protocol: str, detector: str):
    """(height, width) and the NumPy dtype of the detector's image input, from its config."""
    if protocol == "grpc":
        import tritonclient.grpc as module

        config = module.InferenceServerClient(url).get_model_config(detector, as_json=True)["config"]
    else:
        import tritonclient.http as module

        config = module.InferenceServerClient(url).get_model_config(detector)
    dims = [int(d) for d in config["input"][0]["dims"]]
    return (dims[1], dims[2]), np.dtype(np.float16 if config["input"][0]["data_type"] == "TYPE_FP16" else np.float32)


def perf_analyzer_env() -> dict:
    """perf_analyzer links libcudart.so.12 even on CPU: the pip package nvidia-cuda-runtime-cu12 provides it (or
    PERF_ANALYZER_LIBS, a folder carried with a perf_analyzer binary)."""
    env = dict(os.environ)
    libs = [env["PERF_ANALYZER_LIBS"]] if env.get("PERF_ANALYZER_LIBS") else []
    try:
        import nvidia.cuda_runtime

        libs.append(str(Path(nvidia.cuda_runtime.__path__[0]) / "lib"))
    except ImportError:
        pass
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, env.get("LD_LIBRARY_PATH")]))
    return env


def find_perf_analyzer() -> str:
    candidate = Path(sys.executable).parent / "perf_analyzer"  # installed by the tritonclient wheel
    return os.environ.get("PERF_ANALYZER", str(candidate))


# what perf_analyzer says when its window was too short for the load: an unstable measurement, or a window in which
# no request finished (a busy shared CPU); both are worth a second try with a longer window, as it advises
TOO_SHORT = ("Failed to obtain stable measurement", "No valid requests recorded within time interval")


def run_point(args, model: str, concurrency: int, data_file: Path, csv_file: Path, extra=()) -> dict:
    """One perf_analyzer run at one concurrency. A window too short for the load (an unstable measurement, or no
    request finished in it: a noisy shared CPU, a slow first window) is retried with the window doubled, as
    perf_analyzer itself advises; the window used goes into the row."""
    for attempt in range(args.retries + 1):
        window_ms = args.measurement_ms * 2 ** attempt
        command = [
            find_perf_analyzer(), "-m", model, "-u", args.url, "-i", args.protocol,
            "--input-data", str(data_file) if data_file else "random", "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(window_ms), "--stability-percentage", str(args.stability),
            "--max-trials", str(args.max_trials), "--percentile", "50", "-f", str(csv_file), *extra,
        ]
        done = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True)
        if done.returncode == 0:
            break
        if any(text in done.stdout + done.stderr for text in TOO_SHORT) and attempt < args.retries:
            tqdm.write(f"{model} concurrency {concurrency}: no stable measurement in a {window_ms} ms window, "
                       f"retrying with {2 * window_ms} ms", file=sys.stderr)
            continue
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}) for {model} at concurrency {concurrency} "
                           f"after {attempt + 1} attempt(s), last window {window_ms} ms:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(csv_file) as f:
        row = next(csv.DictReader(f))
    return {
        "model": model,
        "concurrency": concurrency,
        "measurement_ms": window_ms,
        "throughput_img_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p90_ms": float(row["p90 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "server_queue_ms": float(row["Server Queue"]) / 1000,
        "server_compute_ms": (float(row["Server Compute Input"]) + float(row["Server Compute Infer"]) + float(row["Server Compute Output"])) / 1000,
    }


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(r["config"] for r in rows):
        part = [r for r in rows if r["config"] == label]
        conc = [r["concurrency"] for r in part]
        ax1.plot(conc, [r["throughput_img_s"] for r in part], "o-", label=label)
        for key, style in (("p50_ms", "o-"), ("p99_ms", "x--")):
            ax2.plot(conc, [r[key] for r in part], style, label=f"{label} {key[:3]}")
    conc = sorted({r["concurrency"] for r in rows})
    ax1.set(xlabel="concurrency", ylabel="images / s", title="throughput", xscale="log", xticks=conc, xticklabels=conc)
    ax1.legend(fontsize=8)
    ax2.set(xlabel="concurrency", ylabel="ms", title="latency", xscale="log", xticks=conc, xticklabels=conc)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-u", "--url", default="localhost:8001")
    parser.add_argument("-i", "--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("-m", "--model", default=specs.YOLOV7.ensemble_name)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--measurement-ms", type=int, default=5000)
    parser.add_argument("--stability", type=int, default=20, help="perf_analyzer --stability-percentage")
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--retries", type=int, default=2,
                        help="re-run an unstable point this many times, doubling the window each time")
    parser.add_argument("--detector", help="detector model for the baseline (default: MODEL without _e2e)")
    parser.add_argument("--no-baseline", action="store_true", help="measure the ensemble only")
    parser.add_argument("--out", type=Path, default=Path("build/perf"))
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    photos = photo_jpegs()
    configs = [("ensemble, JPEG bytes", args.model, args.out / "input_data.json", input_data_json(photos))]
    if not args.no_baseline:
        detector = args.detector or args.model.removesuffix("_e2e")
        hw, dtype = detector_input(args.url, args.protocol, detector)
        configs.append(("baseline: client preprocess, tensor to detector", detector, args.out / "tensor_data.json",
                        tensor_data_json(photos, hw, dtype=dtype)))
    for _, _, data_file, data in configs:
        data_file.write_text(json.dumps(data))
    points = [(label, model, data_file, c) for label, model, data_file, _ in configs for c in args.concurrency]
    rows = []
    for label, model, data_file, c in tqdm(points, desc="perf_analyzer sweep"):
        rows.append({"config": label, **run_point(args, model, c, data_file, args.out / f"pa_{model}_c{c}.csv")})
    baseline = {r["concurrency"]: r["throughput_img_s"] for r in rows if r["config"].startswith("baseline")}
    for r in rows:
        r["ratio_to_baseline"] = round(r["throughput_img_s"] / baseline[r["concurrency"]], 3) if baseline else None

    with open(args.out / "perf.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "perf.json").write_text(json.dumps({"model": args.model, "url": args.url, "protocol": args.protocol, "rows": rows}, indent=2))
    plot(rows, args.out / "perf.png", f"{args.model} over {args.protocol}, real JPEG bytes")
    print(f"{'model':<22} {'conc':>5} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs baseline':>11}")
    for r in rows:
        ratio = f"{r['ratio_to_baseline']:.2f}x" if r["ratio_to_baseline"] is not None else "-"
        print(f"{r['model']:<22} {r['concurrency']:>5} {r['throughput_img_s']:>8.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {ratio:>11}")
    print(f"wrote {args.out}/perf.csv, perf.json, perf.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

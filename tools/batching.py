#!/usr/bin/env python3
"""The GPU detector's batch settings chosen by measurement: `make bench`'s case (b) — the ensemble, real JPEG bytes of
mixed sizes over gRPC — for each setting of the detector's batcher and instance count, on one running server.

    python -m tools.batching -u localhost:8001 -m yolov7 [--concurrency 64 128] [--out build/batching]

Each setting reloads the detector with its config changed (Triton's load with a config override: the files stay,
the ensemble keeps its name and serves the new detector); the preferred batch sizes are also the detector's CUDA
graph buckets (``triton_models/torch_detector.py``), so a setting without them pads each batch up to the next power
of two. Per setting and concurrency: img/s, p50/p99, and from Triton's statistics the images per detector
execution. The detector's first config is loaded again at the end (``--keep-best``: the fastest setting's). Writes
batching.{json,csv,png} under --out.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from tools import perf
from tools.bench import MIXED, resized_jpegs

# setting → changes to the config the server was started with (the GPU preset's: buckets 1, 2, 4 … 32, 2 instances,
# 100 µs): preferred batch sizes (= the detector's CUDA graph buckets), instances, batcher delay
SETTINGS = {
    "as-served": {},
    "buckets-every-4": {"preferred": [1, 2, 4, 8, 12, 16, 20, 24, 28, 32]},
    "no-preferred": {"preferred": []},  # Triton then prefers max_batch_size; graphs 1, 2, 4 … (batches padded)
    "1-instance": {"instances": 1},
    "3-instances": {"instances": 3},
    "delay-1000us": {"delay_us": 1000},
}


def changed_config(config: dict, preferred=None, instances=None, delay_us=None) -> dict:
    """The detector's config (JSON, as Triton returns it) with the setting's fields replaced."""
    config = copy.deepcopy(config)
    batching = config.setdefault("dynamic_batching", {})
    if preferred is not None:
        batching["preferred_batch_size"] = [b for b in preferred if b <= int(config["max_batch_size"])]
    if delay_us is not None:
        batching["max_queue_delay_microseconds"] = str(delay_us)
    if instances is not None:
        config["instance_group"][0]["count"] = instances
    return config


def detector_counts(client, model: str) -> tuple:
    """(images, executions) the detector has run, summed over its versions (Triton's statistics)."""
    stats = client.get_inference_statistics(model_name=model, as_json=True).get("model_stats", [])
    return (sum(int(s.get("inference_count", 0)) for s in stats), sum(int(s.get("execution_count", 0)) for s in stats))


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(r["setting"] for r in rows):
        part = [r for r in rows if r["setting"] == label]
        ax1.plot([r["concurrency"] for r in part], [r["throughput_img_s"] for r in part], "o-", label=label)
        ax2.plot([r["concurrency"] for r in part], [r["images_per_execution"] for r in part], "o-", label=label)
    ax1.set(xlabel="concurrency", ylabel="images / s", title="ensemble throughput")
    ax2.set(xlabel="concurrency", ylabel="images", title="images per detector execution")
    ax1.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    import tritonclient.grpc as grpcclient

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-u", "--url", default="localhost:8001")
    parser.add_argument("-m", "--model", default="yolov7", help="the detector; the ensemble is MODEL_e2e")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--stability", type=int, default=50)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--keep-best", action="store_true",
                        help="leave the fastest setting loaded (a bench that follows measures it), not the first")
    parser.add_argument("--out", type=Path, default=Path("build/batching"))
    args = parser.parse_args(argv)
    args.protocol = "grpc"
    args.out.mkdir(parents=True, exist_ok=True)
    client = grpcclient.InferenceServerClient(args.url)
    first = client.get_model_config(args.model, as_json=True)["config"]
    data_file = args.out / "jpeg_mixed.json"
    data_file.write_text(json.dumps(perf.input_data_json(resized_jpegs(MIXED))))
    rows, failures, keep = [], [], first
    try:
        for label in tqdm(args.settings, desc="settings"):
            started = time.perf_counter()
            config = changed_config(first, **SETTINGS[label])
            try:
                if config != client.get_model_config(args.model, as_json=True)["config"]:  # else served already
                    client.load_model(args.model, config=json.dumps(config))
            except Exception as error:  # a setting that does not load loses its own numbers only
                failures.append({"setting": label, "error": str(error)[-2000:]})
                tqdm.write(f"{label}: did not load: {str(error)[-500:]}", file=sys.stderr)
                continue
            load_s = round(time.perf_counter() - started, 1)
            served = client.get_model_config(args.model, as_json=True)["config"]  # what the server now runs
            batching = served.get("dynamic_batching", {})
            served = {"preferred": [int(b) for b in batching.get("preferred_batch_size", [])],
                      "instances": int(served["instance_group"][0]["count"]),
                      "delay_us": int(batching.get("max_queue_delay_microseconds", 0))}
            for concurrency in args.concurrency:
                before = detector_counts(client, args.model)
                try:
                    row = perf.run_point(args, f"{args.model}_e2e", concurrency, data_file,
                                         args.out / f"pa_{len(rows)}.csv")
                except RuntimeError as error:
                    failures.append({"setting": label, "concurrency": concurrency, "error": str(error)[-2000:]})
                    tqdm.write(f"{label} c={concurrency}: not measured: {str(error)[-600:]}", file=sys.stderr)
                    continue
                images, executions = (a - b for a, b in zip(detector_counts(client, args.model), before))
                rows.append({"setting": label, **row, "reload_s": load_s, **served,
                             "images_per_execution": round(images / max(executions, 1), 2)})
                tqdm.write(f"{label:<28} c={concurrency:<4} {row['throughput_img_s']:>8.1f} img/s  p50 "
                           f"{row['p50_ms']:.1f} ms  {rows[-1]['images_per_execution']} images/execution "
                           f"(reload {load_s} s)")
        if args.keep_best and rows:
            keep = changed_config(first, **SETTINGS[max(rows, key=lambda r: r["throughput_img_s"])["setting"]])
    finally:
        try:
            client.load_model(args.model, config=json.dumps(keep))
        except Exception as error:  # the numbers measured are written all the same
            failures.append({"setting": "restore", "error": str(error)[-2000:]})
            tqdm.write(f"loading the detector's {'fastest' if keep is not first else 'first'} config failed: "
                       f"{str(error)[-600:]}", file=sys.stderr)
    with open(args.out / "batching.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["setting"])
        writer.writeheader()
        writer.writerows(rows)
    best = max(rows, key=lambda r: r["throughput_img_s"], default=None)
    (args.out / "batching.json").write_text(json.dumps({"model": args.model, "rows": rows, "best": best,
                                                        "failures": failures}, indent=2))
    if rows:
        plot(rows, args.out / "batching.png", f"{args.model}_e2e: the detector's batch settings")
    print("best:", json.dumps(best))
    print(f"wrote {args.out}/batching.json, batching.csv, batching.png")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())

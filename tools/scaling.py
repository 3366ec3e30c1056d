#!/usr/bin/env python3
"""GPU scaling: the same `make bench` case on 1 GPU and on N GPUs (one bench.json each) → ratio, CSV, JSON, PNG.

    python tools/scaling.py --bench 1=/tmp/mg_1/bench.json 2=/tmp/mg_2/bench.json --case b --out build/scaling

The ratio is best throughput on N GPUs over best on 1 GPU (each over its own concurrency sweep), for the rows of
``--case`` (b: the ensemble with GPU pre/post). Issue G's target: ≥ 1.9 on 2 GPUs.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def load_rows(path: Path, case: str) -> list:
    return [r for r in json.loads(Path(path).read_text())["rows"] if r["case"] == case]


def scaling(benches: dict, case: str) -> dict:
    """``benches``: GPU count → bench.json path. Best throughput per GPU count and its ratio to the fewest GPUs."""
    best = {}
    for gpus, path in sorted(benches.items()):
        rows = load_rows(path, case)
        if not rows:
            raise SystemExit(f"{path}: no rows of case {case!r}")
        top = max(rows, key=lambda r: r["throughput_img_s"])
        best[gpus] = {"throughput_img_s": top["throughput_img_s"], "concurrency": top["concurrency"], "config": top["config"]}
    base = best[min(best)]["throughput_img_s"]
    for gpus, entry in best.items():
        entry["ratio_to_fewest"] = round(entry["throughput_img_s"] / base, 3)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", nargs="+", required=True, metavar="GPUS=BENCH_JSON")
    parser.add_argument("--case", default="b")
    parser.add_argument("--out", type=Path, default=Path("build/scaling"))
    args = parser.parse_args(argv)
    benches = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.bench)}
    best = scaling(benches, args.case)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"case": args.case, "best": best}, indent=2))
    with open(args.out / "scaling.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["gpus", "concurrency", "throughput_img_s", "p50_ms"])
        for gpus, path in sorted(benches.items()):
            for r in load_rows(path, args.case):
                writer.writerow([gpus, r["concurrency"], r["throughput_img_s"], r["p50_ms"]])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for gpus, path in sorted(benches.items()):
        rows = sorted(load_rows(path, args.case), key=lambda r: r["concurrency"])
        ax.plot([r["concurrency"] for r in rows], [r["throughput_img_s"] for r in rows], marker="o", label=f"{gpus} GPU")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("images/s")
    ax.set_title(f"case ({args.case}) on 1 vs more GPUs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "scaling.png", dpi=120)
    for gpus, entry in best.items():
        print(f"{gpus} GPU: {entry['throughput_img_s']:.1f} img/s at concurrency {entry['concurrency']} "
              f"(×{entry['ratio_to_fewest']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Compare `make bench` runs of one case across set-ups (1 vs 2 GPUs, instance counts…) → ratios, CSV, JSON, PNG.

    python -m tools.scaling --bench "1 GPU=/tmp/mg_1/bench.json" "2 GPUs=/tmp/mg_2/bench.json" --case b --out build/scaling

Each ratio is a set-up's best throughput over the first set-up's best (each over its own concurrency sweep), for
the rows of ``--case`` (b: the ensemble with GPU pre/post). Issue G's target: 2 GPUs ≥ 1.9 × 1 GPU.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def load_rows(path: Path, case: str) -> list:
    return [r for r in json.loads(Path(path).read_text())["rows"] if r["case"] == case]


def scaling(benches: dict, case: str) -> dict:
    """``benches``: label → bench.json path, the first the baseline. Best throughput per set-up and its ratio."""
    best = {}
    for label, path in benches.items():
        rows = load_rows(path, case)
        if not rows:
            raise SystemExit(f"{path}: no rows of case {case!r}")
        top = max(rows, key=lambda r: r["throughput_img_s"])
        best[label] = {"throughput_img_s": top["throughput_img_s"], "concurrency": top["concurrency"], "config": top["config"]}
    base = next(iter(best.values()))["throughput_img_s"]
    for entry in best.values():
        entry["ratio_to_first"] = round(entry["throughput_img_s"] / base, 3)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", nargs="+", required=True, metavar="LABEL=BENCH_JSON", help="the first is the baseline")
    parser.add_argument("--case", default="b")
    parser.add_argument("--out", type=Path, default=Path("build/scaling"))
    args = parser.parse_args(argv)
    benches = {k: Path(v) for k, v in (item.split("=", 1) for item in args.bench)}
    best = scaling(benches, args.case)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"case": args.case, "best": best}, indent=2))
    with open(args.out / "scaling.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setup", "concurrency", "throughput_img_s", "p50_ms"])
        for label, path in benches.items():
            for r in load_rows(path, args.case):
                writer.writerow([label, r["concurrency"], r["throughput_img_s"], r["p50_ms"]])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, path in benches.items():
        rows = sorted(load_rows(path, args.case), key=lambda r: r["concurrency"])
        ax.plot([r["concurrency"] for r in rows], [r["throughput_img_s"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("images/s")
    ax.set_title(f"case ({args.case}): " + " vs ".join(benches))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "scaling.png", dpi=120)
    for label, entry in best.items():
        print(f"{label}: {entry['throughput_img_s']:.1f} img/s at concurrency {entry['concurrency']} "
              f"(×{entry['ratio_to_first']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

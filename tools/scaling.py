#!/usr/bin/env python3
"""Compare `make bench` runs of one case across set-ups (1 vs 2 GPUs, instance counts, square vs rectangular
inference…) → ratios, CSV, JSON, PNG.

    python -m tools.scaling --bench "1 GPU=/tmp/mg_1/bench.json" "2 GPUs=/tmp/mg_2/bench.json" --case b --out build/scaling
    python -m tools.scaling --bench square=build/bench-rect/square/bench.json rect=build/bench-rect/rect/bench.json

Per configuration of ``--case`` (b: the ensemble; one row per image size), each set-up's best throughput over its own
concurrency sweep, its p50 at concurrency 1, and the ratio of that best to the first set-up's best.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def load_rows(path: Path, case: str) -> list:
    return [r for r in json.loads(Path(path).read_text())["rows"] if r["case"] == case]


def scaling(benches: dict, case: str) -> dict:
    """``benches``: label → bench.json path, the first the baseline. Config → label → best throughput, its
    concurrency, p50 at concurrency 1 and the ratio of the best to the baseline's best of that config."""
    rows = {label: load_rows(path, case) for label, path in benches.items()}
    for label, found in rows.items():
        if not found:
            raise SystemExit(f"{benches[label]}: no rows of case {case!r}")
    configs = [c for c in dict.fromkeys(r["config"] for r in next(iter(rows.values())))
               if all(any(r["config"] == c for r in found) for found in rows.values())]
    result = {}
    for config in configs:
        best = {}
        for label, found in rows.items():
            mine = [r for r in found if r["config"] == config]
            top = max(mine, key=lambda r: r["throughput_img_s"])
            single = [r["p50_ms"] for r in mine if r["concurrency"] == 1]
            best[label] = {"throughput_img_s": top["throughput_img_s"], "concurrency": top["concurrency"],
                           "p50_ms_at_1": single[0] if single else None}
        base = next(iter(best.values()))["throughput_img_s"]
        for entry in best.values():
            entry["ratio_to_first"] = round(entry["throughput_img_s"] / base, 3)
        result[config] = best
    return result


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
        writer.writerow(["setup", "config", "concurrency", "throughput_img_s", "p50_ms"])
        for label, path in benches.items():
            for r in load_rows(path, args.case):
                writer.writerow([label, r["config"], r["concurrency"], r["throughput_img_s"], r["p50_ms"]])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, path in benches.items():
        for config in best:
            rows = sorted((r for r in load_rows(path, args.case) if r["config"] == config), key=lambda r: r["concurrency"])
            ax.plot([r["concurrency"] for r in rows], [r["throughput_img_s"] for r in rows], marker="o",
                    label=f"{label}: {config}" if len(best) > 1 else label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("images/s")
    ax.set_title(f"case ({args.case}): " + " vs ".join(benches))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "scaling.png", dpi=120)
    for config, setups in best.items():
        for label, entry in setups.items():
            p50 = f", p50 at concurrency 1 {entry['p50_ms_at_1']:.1f} ms" if entry["p50_ms_at_1"] is not None else ""
            print(f"{config} — {label}: {entry['throughput_img_s']:.2f} img/s at concurrency {entry['concurrency']}"
                  f"{p50} (×{entry['ratio_to_first']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

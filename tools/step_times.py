#!/usr/bin/env python3
"""Where the time goes inside each Python step, beside what Triton sees of it.

    YOLO_TRITON_STEP_TIMES=/tmp/steps make serve ...      # each step instance writes <model>.<pid>.csv
    python -m tools.step_times /tmp/steps [--stats-before a.json --stats-after b.json] [--skip-s 2] [--out steps.json]

Triton's statistics time a Python-backend step as one block: "compute infer" is the whole round trip from the
server to the stub process and back. The rows the steps write themselves (``StepTimes`` in
``yolo_triton/triton_models/common.py``) split our ``execute`` into its phases. The difference between
Triton's compute infer per execution and our ``execute`` is the Python backend's own cost (requests and
responses through shared memory, DLPack hand-over, the stub's loop). ``busy`` is the share of the measured span
during which an instance was inside ``execute``: near 100 % means that step is the bottleneck.

With two snapshots of ``get_inference_statistics`` (before and after the load, as JSON) the Triton side is
the difference between them, so earlier load (warm-up, other cases) stays out of it.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional


def read_rows(folder: Path, skip_s: float) -> Dict[str, List[List[dict]]]:
    """model → one list of rows per instance (file), rows started in the first ``skip_s`` seconds left out."""
    per_model: Dict[str, List[List[dict]]] = defaultdict(list)
    files = sorted(folder.glob("*.csv"))
    first = min((float(r["start"]) for f in files for r in csv.DictReader(open(f))), default=0.0)
    for path in files:
        model = path.name.rsplit(".", 2)[0]
        rows = [r for r in csv.DictReader(open(path)) if float(r["start"]) >= first + skip_s]
        if rows:
            per_model[model].append(rows)
    return per_model


GPU_COLUMN = "gpu"  # StepTimes' column for the steps on a GPU (yolo_triton/triton_models/common.py)


def summarise_instances(instances: List[List[dict]]) -> dict:
    phases = [k for k in instances[0][0] if k not in ("start", "images", GPU_COLUMN)]
    row_ms = lambda r: sum(float(r[p]) for p in phases)  # noqa: E731 — one execute, all its phases
    rows = [r for rows in instances for r in rows]
    execute_ms = [row_ms(r) for r in rows]
    images = sum(int(r["images"]) for r in rows)
    busy = []
    for inst in instances:
        span = float(inst[-1]["start"]) - float(inst[0]["start"])
        busy.append(sum(row_ms(r) for r in inst[:-1]) / 1e3 / span if span > 0 else None)
    slowest = max(range(len(rows)), key=execute_ms.__getitem__)
    ordered = sorted(execute_ms)
    return {
        "instances": len(instances),
        "executions": len(rows),
        "images_per_execution": round(images / len(rows), 2),
        "execute_ms": round(sum(execute_ms) / len(rows), 3),
        "phases_ms": {p: round(sum(float(r[p]) for r in rows) / len(rows), 3) for p in phases},
        "execute_ms_per_image": round(sum(execute_ms) / images, 3) if images else None,
        # a stall inside our own code would show here; one outside it (Triton, the stub) would not
        "execute_ms_p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "execute_ms_max": round(ordered[-1], 3),
        "slowest_execution": {k: rows[slowest][k] for k in rows[slowest]},
        "busy_share": [round(b, 3) if b is not None else None for b in busy],
        # the GPU's time from the execute's start to its last GPU work (CUDA events; steps on a GPU only)
        **({"gpu_ms": round(sum(float(r[GPU_COLUMN]) for r in rows) / len(rows), 3)} if GPU_COLUMN in rows[0] else {}),
    }


def _model_stats(snapshot: Optional[dict]) -> Dict[str, dict]:
    if not snapshot:
        return {}
    return {m["name"]: m for m in snapshot.get("model_stats", [])}


def _ns(stats: dict, *keys) -> float:
    for key in keys:
        stats = stats.get(key, {})
    return float(stats or 0)


def triton_side(before: Optional[dict], after: dict) -> Dict[str, dict]:
    """Per model from two statistics snapshots: executions, images, and per-request milliseconds of queue and
    compute input / infer / output (Triton gives every request of a batch the batch's durations)."""
    old, new = _model_stats(before), _model_stats(after)
    out = {}
    for name, stats in new.items():
        prev = old.get(name, {})
        delta = lambda *keys: _ns(stats, *keys) - _ns(prev, *keys)  # noqa: E731
        requests = delta("inference_stats", "success", "count")
        if requests <= 0:
            continue
        executions = delta("execution_count")
        out[name] = {
            "executions": int(executions),
            "images_per_execution": round(delta("inference_count") / executions, 2) if executions else None,
            **{f"{part}_ms": round(delta("inference_stats", part, "ns") / requests / 1e6, 3)
               for part in ("queue", "compute_input", "compute_infer", "compute_output")},
        }
    return out


def pool_warnings(log: Path) -> dict:
    """Lines where the Python backend says it left the CUDA memory pool (host fallback, per-tensor CUDA IPC)."""
    text = log.read_text(errors="replace")
    needles = ("falling back to pinned system memory", "Failed to allocate memory from CUDA memory pool",
               "Failed to share CUDA memory pool")
    return {needle: text.count(needle) for needle in needles}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--stats-before", type=Path)
    parser.add_argument("--stats-after", type=Path)
    parser.add_argument("--skip-s", type=float, default=2.0, help="leave out executions of the first seconds (warm-up)")
    parser.add_argument("--server-log", type=Path, help="the server's log: count its CUDA memory pool warnings")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    ours = {model: summarise_instances(inst) for model, inst in read_rows(args.folder, args.skip_s).items()}
    theirs = {}
    if args.stats_after:
        before = json.loads(args.stats_before.read_text()) if args.stats_before else None
        theirs = triton_side(before, json.loads(args.stats_after.read_text()))
    report = {}
    print(f"{'model':<24} {'img/exec':>8} {'triton queue':>12} {'in':>6} {'infer':>7} {'out':>6} {'execute':>8} {'max':>8}"
          f" {'backend':>8} {'busy':>6}  phases (ms)")
    for model in sorted(set(ours) | set(theirs)):
        mine, triton = ours.get(model), theirs.get(model)
        entry = {"execute": mine, "triton": triton}
        if mine and triton:
            # what the Python backend spends around our execute: shared memory, DLPack, the stub's loop
            entry["backend_overhead_ms"] = round(triton["compute_infer_ms"] - mine["execute_ms"], 3)
        report[model] = entry
        t = triton or {}
        m = mine or {}
        fmt = lambda v, w, d=2: f"{v:>{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"  # noqa: E731
        busy = max((b for b in m.get("busy_share", []) if b is not None), default=None)
        phases = " ".join(f"{k}={v:.2f}" for k, v in m.get("phases_ms", {}).items())
        print(f"{model:<24} {fmt(m.get('images_per_execution', t.get('images_per_execution')), 8)}"
              f" {fmt(t.get('queue_ms'), 12)} {fmt(t.get('compute_input_ms'), 6)} {fmt(t.get('compute_infer_ms'), 7)}"
              f" {fmt(t.get('compute_output_ms'), 6)} {fmt(m.get('execute_ms'), 8)}"
              f" {fmt(entry.get('backend_overhead_ms'), 8)} {fmt(busy, 6)}  {phases}")
    if args.server_log:
        report["server_log_pool_warnings"] = pool_warnings(args.server_log)
        print("memory pool warnings in the server log:", json.dumps(report["server_log_pool_warnings"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if report else 1


if __name__ == "__main__":
    raise SystemExit(main())

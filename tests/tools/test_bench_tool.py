"""`make bench` smoke on the CPU: real perf_analyzer, the four configurations on tiny settings (the GPU numbers come
from tools/gpu_check.sh on the GPU machine)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..helpers import TORCH_SPECS

ROOT = Path(__file__).resolve().parents[2]


def test_bench_measures_every_configuration(server, tmp_path):
    model = TORCH_SPECS[0].name  # RUNTIME=torch detector (CPU here) and its ensemble
    command = [sys.executable, "-m", "tools.bench", "-u", server.grpc_url, "-m", model, "--shared-memory", "system",
               "--concurrency", "1", "--sizes", "320x240", "--measurement-ms", "1500", "--stability", "100",
               "--max-trials", "6", "--retries", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["failures"] == [], json.dumps(report["failures"], indent=1)  # every point measured, or why not
    cases = {r["case"] for r in report["rows"]}
    assert cases == {"a", "b", "d"}  # no CPU twin in this repository: (c) is left out, not failed
    assert all(r["throughput_img_s"] > 0 for r in report["rows"])
    b = next(r for r in report["rows"] if r["case"] == "b")
    assert b["ratio_to_a"] > 0 and b["ratio_to_d"] > 0 and "best_b_over_best_a" in report["ratios"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert any(m["name"] == model for m in stats["model_stats"])
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_scaling_compares_best_points_and_plots(tmp_path):
    """tools/scaling.py: per configuration (image size) of (b), each set-up's best over the first set-up's best,
    other cases ignored; CSV and PNG."""
    def bench(path, points):
        rows = [{"case": case, "config": config, "concurrency": c, "throughput_img_s": t, "p50_ms": 10.0 * c}
                for case, config, c, t in points]
        path.write_text(json.dumps({"rows": rows}))
        return path

    one = bench(tmp_path / "one.json", [("b", "wide", 16, 300.0), ("b", "wide", 64, 400.0), ("a", "wide", 64, 900.0),
                                        ("b", "tall", 1, 50.0)])
    two = bench(tmp_path / "two.json", [("b", "wide", 16, 500.0), ("b", "wide", 64, 780.0), ("b", "wide", 128, 760.0),
                                        ("b", "tall", 1, 80.0)])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "tools.scaling", "--bench", f"1 GPU={one}", f"2 GPU={two}", "--out", str(out)],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    best = json.loads((out / "scaling.json").read_text())["best"]
    wide, tall = best["wide"], best["tall"]
    assert wide["1 GPU"]["throughput_img_s"] == 400.0 and wide["2 GPU"]["concurrency"] == 64
    assert wide["2 GPU"]["ratio_to_first"] == 1.95 and tall["2 GPU"]["ratio_to_first"] == 1.6
    assert tall["1 GPU"]["p50_ms_at_1"] == 10.0 and wide["1 GPU"]["p50_ms_at_1"] is None
    assert (out / "scaling.png").stat().st_size > 0 and len((out / "scaling.csv").read_text().splitlines()) == 8


def test_handover_probe_runs_on_the_host(tmp_path):
    """tools/handover_probe.py on a CPU host: its own server, the host placement, every element handed over (the
    tool checks the consumer's sum itself and fails otherwise), Triton's per-step statistics, CSV/JSON/PNG."""
    out = tmp_path / "handover"
    run = subprocess.run([sys.executable, "-m", "tools.handover_probe", "--sizes-mib", "0.001", "2",
                          "--concurrency", "2", "--measurement-ms", "1000", "--stability", "100", "--retries", "3",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "handover.json").read_text())
    assert [(r["place"], r["elements"]) for r in report["rows"]] == [("cpu", 262), ("cpu", 524288)]
    for row in report["rows"]:
        assert row["arrived_on_gpu"] is False and row["throughput_per_s"] > 0
        assert row["handover_ms"] >= row["consumer_infer_ms"] > 0  # the parts add up to the total
    assert set(report["server_log_pool_warnings"].values()) == {0}
    assert (out / "handover.png").read_bytes()[:4] == b"\x89PNG" and len((out / "handover.csv").read_text().splitlines()) == 3


def test_batching_sweep_serves_each_setting_and_restores_the_first(repository, tmp_path):
    """tools/batching.py: each setting is the config the server then serves (read back from it), measured through
    the ensemble with real perf_analyzer; the detector's first config is served again afterwards. Its own server,
    with explicit model control as `make serve` runs it (a reload needs it)."""
    import tritonclient.grpc as grpcclient

    from yolo_triton.serving.triton import TritonServer

    model = TORCH_SPECS[0].name
    explicit = ["--model-control-mode=explicit", f"--load-model={TORCH_SPECS[0].ensemble_name}"]
    with TritonServer(repository, log_path=tmp_path / "triton.log", extra=explicit) as server:
        sweep(server, model, tmp_path)


def sweep(server, model, tmp_path):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    first = client.get_model_config(model, as_json=True)["config"]
    command = [sys.executable, "-m", "tools.batching", "-u", server.grpc_url, "-m", model, "--concurrency", "2",
               "--settings", "no-preferred", "delay-1000us", "--measurement-ms", "1000", "--stability", "100",
               "--retries", "3", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "batching.json").read_text())
    assert report["failures"] == [], report["failures"]
    unpreferred, delayed = report["rows"]
    # an empty list, which Triton fills with max_batch_size
    assert unpreferred["preferred"] == [int(first["max_batch_size"])] and delayed["delay_us"] == 1000
    assert delayed["preferred"] == [int(b) for b in first["dynamic_batching"]["preferred_batch_size"]]
    assert all(r["throughput_img_s"] > 0 and r["images_per_execution"] >= 1 for r in report["rows"])
    assert client.get_model_config(model, as_json=True)["config"] == first
    assert (tmp_path / "batching.png").read_bytes()[:4] == b"\x89PNG"

"""`make perf` smoke: real perf_analyzer against the session's server, tiny settings."""
from __future__ import annotations

import base64
import csv
import json
import struct
import subprocess
import sys
from pathlib import Path

from ..helpers import SMALL

ROOT = Path(__file__).resolve().parents[2]


def test_bytes_input_data_carries_the_length_prefix():
    from tools import perf

    data = perf.input_data_json([b"\xff\xd8abc", b"xy"])
    raw = base64.b64decode(data["data"][0]["IMAGE"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == 5 and raw[4:] == b"\xff\xd8abc"
    assert data["data"][1]["IMAGE"]["shape"] == [1]


def perf_command(server, out: Path, *extra: str) -> list:
    return [sys.executable, "-m", "tools.perf", "-u", server.grpc_url, "-m", SMALL.ensemble_name,
            "--out", str(out), *extra]


def test_perf_sweep_writes_csv_json_and_plot(server, tmp_path):
    out = tmp_path / "perf"
    # Loose stability and retries: the CI machine is 2 shared cores; this checks the tool, not the numbers.
    command = perf_command(server, out, "--concurrency", "1", "2", "--measurement-ms", "1500", "--max-trials", "6",
                           "--stability", "100", "--retries", "2")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "perf.csv")))
    assert {r["model"] for r in rows} == {SMALL.ensemble_name, SMALL.name}  # ensemble and its baseline
    assert all(float(r["throughput_img_s"]) > 0 and int(r["measurement_ms"]) >= 1500 for r in rows)
    report = json.loads((out / "perf.json").read_text())
    assert all(r["ratio_to_baseline"] > 0 for r in report["rows"])
    assert (out / "perf.png").read_bytes()[:4] == b"\x89PNG"


def test_unstable_point_is_retried_with_longer_windows_then_fails_clearly(server, tmp_path):
    # A 0 % stability target can never be met, so every attempt is unstable.
    command = perf_command(server, tmp_path / "perf", "--concurrency", "1", "--no-baseline", "--measurement-ms", "200",
                           "--max-trials", "3", "--stability", "0", "--retries", "1")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "no stable measurement in a 200 ms window, retrying with 400 ms" in done.stderr
    assert "after 2 attempt(s), last window 400 ms" in done.stderr

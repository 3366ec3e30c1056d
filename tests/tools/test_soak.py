"""`make soak`, short: tools/soak.py against the session server's small YOLOv7 (2 CPU cores in CI).

500 requests at concurrency 16, 10 % malformed, 2 % batches: every request answered exactly once, good images
equal to the answer they got alone, malformed ones refused with INVALID_ARG, memory bounded. The answers taken as
the reference are themselves checked against the independent reference of tests/reference.py, and each check is
shown to fail when it is violated.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolo_triton import specs

from tools import soak

from ..helpers import LOW_CONF, SMALL

ROOT = Path(__file__).resolve().parents[2]

CONF = LOW_CONF["conf_threshold"]  # the small model with random weights finds nothing at the default 0.25
REQUESTS, CONCURRENCY = 500, 16
# Memory on a short run: a fresh server's pools (the Python backend's shared-memory regions, onnxruntime's arena
# for each new batch size) are still filling during the first ~250 requests at concurrency 16 (measured here:
# PSS +19 % between 10 % and the end of a 400-request run, RSS +18 %). After half the run they are filled and
# PSS moves by a few % either way (measured: +2.6 %, peak +4.7 %), so the warm-up is half the run and the bound
# the tool's default 10 %. PSS, not the RSS sum: the server maps every stub's shared-memory region (several times
# as it grows), so the RSS sum counts those pages over and over and keeps rising while PSS is flat (3,000
# requests at concurrency 64 on a warm server: RSS +57 %, PSS +0.2 %).
WARMUP_SHARE, MAX_GROWTH = 0.5, 0.10


@pytest.fixture(scope="module")
def good():
    return soak.good_images()


@pytest.fixture(scope="module")
def short_soak(server, good, tmp_path_factory):
    out = tmp_path_factory.mktemp("soak")
    result = soak.run_soak(server.grpc_url, SMALL.ensemble_name, requests=REQUESTS, concurrency=CONCURRENCY,
                           malformed_share=0.10, seed=1, timeout=120, max_growth=MAX_GROWTH, warmup_share=WARMUP_SHARE,
                           server_pid=server.process.pid, conf=CONF, good=good, progress=False, out=out)
    print(soak.report(result))
    return result, out


def test_short_soak_passes(short_soak):
    result, _ = short_soak
    assert result.passed, soak.report(result)
    assert result.sent == REQUESTS and result.answered_ok + result.answered_error == REQUESTS
    assert result.missing == result.duplicated == result.wrong_id == 0
    kinds = result.per_kind
    assert {f"malformed:{name}" for name in soak.malformed_inputs()} <= set(kinds), "every malformed kind was sent"
    assert sum(c["sent"] for k, c in kinds.items() if k.startswith("malformed:")) == round(REQUESTS * 0.10)
    for kind, counts in kinds.items():
        assert counts["wrong"] == counts["missing"] == 0, kind
        expect_ok = kind in ("good", "batch_good")
        assert counts["ok" if expect_ok else "error"] == counts["sent"], kind
    assert kinds["batch_good"]["sent"] and kinds["batch_mixed"]["sent"]
    # every good image was compared with its reference, within the stated tolerance (measured: bit-identical)
    assert result.compared == kinds["good"]["images"] + kinds["batch_good"]["images"]
    assert result.max_box_dev <= 1e-3 and result.max_score_dev <= 1e-4
    assert result.reference_boxes > 100, "references without boxes would prove little"
    assert result.growth is not None and result.growth < MAX_GROWTH
    assert result.rss_peak_mib >= result.rss_end_mib > 0 and result.server_ready_after


def test_outputs_written(short_soak):
    result, out = short_soak
    document = json.loads((out / "soak.json").read_text())
    assert document["summary"]["passed"] and document["summary"]["sent"] == REQUESTS
    assert len(document["references"]) == len(result.references)
    rows = list(csv.DictReader(open(out / "soak.csv")))
    assert len(rows) == len(result.memory) >= 3
    assert {"answered", "rss_mib", "pss_mib", "rss_mib:tritonserver"} <= set(rows[0])
    assert int(rows[-1]["answered"]) == REQUESTS and int(rows[-1]["processes"]) >= 4  # server + its stubs
    assert (out / "soak.png").stat().st_size > 10_000


def test_references_match_the_independent_reference(short_soak, good, reference_small):
    """The answers the soak takes as its reference are right, not just the server agreeing with itself."""
    result, _ = short_soak
    assert set(result.references) == set(good)
    for name, data in good.items():
        answer = result.references[name]
        boxes, scores, classes = reference_small.detect(data, conf=CONF)
        assert len(answer.scores) == len(scores), name
        np.testing.assert_array_equal(answer.classes, classes, err_msg=name)
        np.testing.assert_allclose(answer.scores, scores, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(answer.boxes, boxes.reshape(-1, 4), atol=0.05, err_msg=name)
        assert list(answer.names) == [specs.COCO80_NAMES[c] for c in classes], name


def _shifted(answer: soak.Answer, pixels: float) -> soak.Answer:
    return soak.Answer(answer.classes, answer.names, answer.scores, answer.boxes + pixels)


def _violations(result, good):
    """Small runs that each break one check: name → (run_soak keyword arguments, text the failure must contain)."""
    name = max(good, key=lambda n: len(result.references[n].scores))  # the image with the most boxes
    one = {name: good[name]}
    return {
        # a reference off by 0.01 px: above the 1e-3 px tolerance
        "wrong_reference": (dict(good=one, references={name: _shifted(result.references[name], 0.01)}),
                            "differ from their reference"),
        # a good photo that the soak is told to expect refused
        "malformed_accepted": (dict(good=one, malformed={"disguised": (good[name], "cannot decode")}),
                               "malformed requests answered with detections"),
        # an error message the server does not give
        "wrong_error": (dict(good=one, malformed={"empty": (b"", "some other message")}),
                        "refused without INVALID_ARG and the expected message"),
        # no answer within the client's deadline
        "missing": (dict(good=one, timeout=0.001), "got no answer within"),
        # any growth at all is above a limit of -100 %
        "memory": (dict(good=one, max_growth=-1.0, measure_memory=True), "grew"),
    }


@pytest.mark.parametrize("case", ["wrong_reference", "malformed_accepted", "wrong_error", "missing", "memory"])
def test_each_check_can_fail(server, short_soak, good, case):
    result, _ = short_soak
    kwargs, failure = _violations(result, good)[case]
    kwargs = {"measure_memory": False, "server_pid": server.process.pid, **kwargs}
    if kwargs.get("references") is None:
        kwargs["references"] = {n: result.references[n] for n in kwargs["good"]}
    broken = soak.run_soak(server.grpc_url, SMALL.ensemble_name, requests=40, concurrency=8, malformed_share=0.25,
                           batch_share=0, seed=2, conf=CONF, progress=False, **{"timeout": 60, **kwargs})
    assert not broken.passed, soak.report(broken)
    assert any(failure in f for f in broken.failures), broken.failures
    assert broken.sent == 40


def test_cli_exit_status_and_server_pid(server, tmp_path):
    assert soak.find_server_pid(server.grpc_url) == server.process.pid  # found by its --grpc-port
    command = [sys.executable, "-m", "tools.soak", "-u", server.grpc_url, "-m", SMALL.ensemble_name,
               "--requests", "30", "--concurrency", "4", "--conf", str(CONF), "--max-growth", "-1", "--no-progress",
               "--server-pid", str(server.process.pid), "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAIL: server PSS grew" in done.stdout and (tmp_path / "soak.json").exists()
    wrong_model = subprocess.run([*command[:6], "yolov7_nonexistent_e2e", *command[7:]], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
    assert wrong_model.returncode == 2 and "error:" in wrong_model.stderr

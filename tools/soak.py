#!/usr/bin/env python3
"""Soak: many requests at high concurrency, a share of them malformed, against a running ensemble (`make soak`).

    python -m tools.soak [-u localhost:8001] [-m yolov7_e2e] [--requests 10000] [--concurrency 64]
                         [--malformed-share 0.1] [--seed 0] [--out build/soak] [--max-growth 0.10]
                         [--conf 0.02] [--server-pid PID | --no-memory]

Inputs: the photos of the scikit-image wheel re-encoded as JPEG (quality 90) and PNG at three scales (the good
images), and malformed inputs of the kinds the server refuses (tests/test_bad_inputs.py): empty, random bytes, a
truncated JPEG, a JPEG header only, text, PNG headers declaring too many pixels, GIF, TIFF. A small share of the
requests are batches ([B, 1], B 2–4): all good, or good ones with one malformed item (which fails the whole
request by design, its message naming the item: ``IMAGE[i]: ...``). The schedule comes from --seed.

Before the load every distinct good image is sent once, alone, in sequence: that answer is its reference. Then
--requests requests go out with --concurrency in flight (tritonclient gRPC ``async_infer``, own request ids), and:

  * every request gets exactly one response within --timeout (none missing, none duplicated, the response's id
    is the request's);
  * every good image's answer equals its reference: same count, classes and names, boxes within --box-tol pixels
    and scores within --score-tol (dynamic batching may change float rounding; the maxima seen are reported);
  * every malformed request fails alone with INVALID_ARG and the message naming the problem, never a success;
  * the server's memory — the tritonserver process and all its descendants (the Python backend stubs), read
    from /proc — grows less than --max-growth between the warm-up point (--warmup-share of the requests
    answered) and the end; the peak is reported too. The warm-up is 20 % by default: on a fresh server the pools
    fill for the first thousands of requests (docs/operations.md). Checked on PSS by default (--memory-metric): the
    server maps each stub's shared-memory region, several times over as the region grows, so the sum of RSS counts
    those pages again and again and climbs while the memory actually used does not; PSS counts each page once.
    Both are reported, RSS per process in the CSV;
  * the server is still live and the model ready afterwards.

The server's pid is --server-pid, else the one local ``tritonserver`` whose --grpc-port is the URL's port.
Writes <out>/soak.json (summary, checks, per-kind counts, memory samples), soak.csv (memory samples over time)
and soak.png (PSS and RSS over requests answered and over time), prints a table, and exits 1 with the reasons
if a check fails (2: bad arguments, server unreachable, pid not found). ``run_soak(...)`` is the same run from
Python.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from tools.soak_workload import BATCH_SIZES, Planned, good_images, malformed_inputs, schedule
from yolo_triton import specs
from yolo_triton.client import Detector, parse_result
from yolo_triton.serving.processes import memory_of, tritonservers

INVALID = "INVALID_ARG"  # gRPC StatusCode.INVALID_ARGUMENT
MEMORY_METRICS = ("pss", "rss")


class SoakError(RuntimeError):
    """The soak cannot run (server unreachable, pid not found, bad arguments) — not a failed check."""


# ---------------------------------------------------------------------------------------------------- answers


@dataclasses.dataclass(frozen=True)
class Answer:
    """One image's detections as arrays, for comparing."""

    classes: np.ndarray
    names: Tuple[str, ...]
    scores: np.ndarray
    boxes: np.ndarray  # [n, 4] x1 y1 x2 y2, original pixels

    @classmethod
    def of(cls, detections) -> "Answer":
        return cls(np.array([d.class_id for d in detections], np.int64), tuple(d.name for d in detections),
                   np.array([d.score for d in detections], np.float64),
                   np.array([d.box for d in detections], np.float64).reshape(-1, 4))

    def to_json(self) -> dict:
        return {"classes": self.classes.tolist(), "names": list(self.names), "scores": self.scores.tolist(),
                "boxes": self.boxes.tolist()}


def compare(answer: Answer, reference: Answer) -> Tuple[Optional[str], float, float]:
    """(what differs structurally or None, max |Δbox| px, max |Δscore|)."""
    if len(answer.scores) != len(reference.scores):
        return f"{len(answer.scores)} detections, reference {len(reference.scores)}", math.inf, math.inf
    if not np.array_equal(answer.classes, reference.classes) or answer.names != reference.names:
        return f"classes {answer.classes.tolist()}, reference {reference.classes.tolist()}", math.inf, math.inf
    if not len(answer.scores):
        return None, 0.0, 0.0
    return None, float(np.abs(answer.boxes - reference.boxes).max()), float(np.abs(answer.scores - reference.scores).max())


# ---------------------------------------------------------------------------------------------------- memory


def find_server_pid(url: str) -> int:
    """The one local tritonserver process serving gRPC at ``url``'s port (``--grpc-port``, default 8001)."""
    port = urlsplit(f"//{url.split('://')[-1]}").port or 8001
    found = tritonservers(port)
    if len(found) != 1:
        raise SoakError(f"{len(found) or 'no'} local tritonserver process(es) with gRPC port {port}"
                        f"{' (' + ', '.join(map(str, found)) + ')' if found else ''}: give --server-pid (or --no-memory)")
    return found[0]


class MemorySampler:
    """A thread sampling the server tree's memory every ``interval`` s, and at once when woken."""

    def __init__(self, pid: int, interval: float, answered):
        self.pid, self.interval, self.answered = pid, interval, answered
        self.samples: List[dict] = []
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.start_time = time.monotonic()
        self.thread = threading.Thread(target=self._loop, name="soak-memory", daemon=True)

    def sample(self) -> dict:
        rss, pss, each = memory_of(self.pid)
        record = {"t_s": round(time.monotonic() - self.start_time, 3), "answered": self.answered(),
                  "rss_mib": round(rss / 2**20, 2), "pss_mib": round(pss / 2**20, 2), "processes": len(each),
                  "rss_by_process_mib": each}
        self.samples.append(record)
        return record

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if not self.stopping.is_set():
                self.sample()

    def __enter__(self) -> "MemorySampler":
        if not self.sample()["processes"]:
            raise SoakError(f"no process {self.pid} to measure (is --server-pid the tritonserver?)")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join()


# ---------------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class SoakResult:
    config: dict
    sent: int = 0
    images: int = 0
    answered_ok: int = 0
    answered_error: int = 0
    missing: int = 0  # no answer within the timeout (a DEADLINE_EXCEEDED callback, or none at all)
    duplicated: int = 0  # answers beyond the first for a request
    wrong_id: int = 0
    per_kind: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
    compared: int = 0  # good images compared with their reference
    identical: int = 0  # ... of which bit-identical
    mismatched: int = 0  # ... outside the tolerance (or another count or class)
    max_box_dev: float = 0.0
    max_score_dev: float = 0.0
    good_failed: int = 0  # good requests answered with an error
    malformed_accepted: int = 0  # malformed requests answered with detections
    wrong_error: int = 0  # malformed requests refused, but not with INVALID_ARG and the expected message
    problems: List[str] = dataclasses.field(default_factory=list)  # the first examples of each failure
    latency_ms: Dict[str, float] = dataclasses.field(default_factory=dict)
    references: Dict[str, Answer] = dataclasses.field(default_factory=dict)
    reference_boxes: int = 0
    memory: List[dict] = dataclasses.field(default_factory=list)
    # both sums over the server's process tree, in MiB, at the warm-up point, at the end, and their peak
    rss_warmup_mib: Optional[float] = None
    rss_end_mib: Optional[float] = None
    rss_peak_mib: Optional[float] = None
    pss_warmup_mib: Optional[float] = None
    pss_end_mib: Optional[float] = None
    pss_peak_mib: Optional[float] = None
    growth_rss: Optional[float] = None
    growth_pss: Optional[float] = None
    growth: Optional[float] = None  # of the checked metric (config memory_metric)
    server_ready_after: Optional[bool] = None
    wall_s: float = 0.0
    failures: List[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def img_s(self) -> float:
        return self.images / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("memory", "references", "config")}
        out.update(passed=self.passed, img_s=round(self.img_s, 2), req_s=round(self.sent / self.wall_s, 2) if self.wall_s else 0.0)
        return out


def _note(result: SoakResult, text: str, limit: int = 20) -> None:
    if len(result.problems) < limit:
        result.problems.append(text)


def run_soak(url: str = "localhost:8001", model: str = specs.YOLOV7.ensemble_name, requests: int = 10_000,
             concurrency: int = 64, malformed_share: float = 0.10, batch_share: float = 0.02, seed: int = 0,
             timeout: float = 120.0, max_growth: float = 0.10, warmup_share: float = 0.20, memory_metric: str = "pss",
             server_pid: Optional[int] = None, measure_memory: bool = True, conf: Optional[float] = None,
             box_tol: float = 1e-3, score_tol: float = 1e-4, sample_interval: float = 0.5,
             good: Optional[Dict[str, bytes]] = None, malformed: Optional[Dict[str, Tuple[bytes, str]]] = None,
             references: Optional[Dict[str, Answer]] = None, progress: bool = True,
             out: Optional[Path] = None) -> SoakResult:
    """The soak (see the module docstring). ``good``/``malformed`` replace the built-in inputs, ``references``
    the answers asked from the server before the load (a test gives a wrong one to see the check fail)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    if memory_metric not in MEMORY_METRICS:
        raise SoakError(f"memory metric {memory_metric!r}; known: {', '.join(MEMORY_METRICS)}")
    if requests < 1 or concurrency < 1 or not 0 <= malformed_share + batch_share <= 1 or not 0 < warmup_share < 1:
        raise SoakError("need requests ≥ 1, concurrency ≥ 1, 0 ≤ malformed share + batch share ≤ 1, 0 < warm-up share < 1")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    good = good_images() if good is None else good
    malformed = malformed_inputs(seed) if malformed is None else malformed
    config = dict(url=url, model=model, requests=requests, concurrency=concurrency, malformed_share=malformed_share,
                  batch_share=batch_share, seed=seed, timeout_s=timeout, max_growth=max_growth, warmup_share=warmup_share,
                  memory_metric=memory_metric,
                  conf=conf, box_tol_px=box_tol, score_tol=score_tol, good_images=len(good),
                  expected_errors={kind: message for kind, (_, message) in sorted(malformed.items())})
    try:
        # live, ready, takes encoded images; --timeout is for the load, the set-up calls get at least a minute
        with Detector(url, model, timeout=max(timeout, 60.0)) as detector:
            if batch_share and detector.max_batch_size < max(BATCH_SIZES):
                raise SoakError(f"{model}'s max batch size is {detector.max_batch_size}: use --batch-share 0")
            parameters = detector.parameters(conf)
            fresh = {}
            if references is None:  # each good image once, alone, in sequence
                for name, data in tqdm(good.items(), desc="reference", disable=not progress, leave=False):
                    fresh[name] = Answer.of(detector.detect(data, conf=conf))
    except Exception as error:  # noqa: BLE001 — ClientError from the Detector: cannot run at all
        if isinstance(error, SoakError):
            raise
        raise SoakError(str(error)) from error
    references = dict(references if references is not None else fresh)
    if missing_refs := sorted(set(good) - set(references)):
        raise SoakError(f"no reference for {', '.join(missing_refs)}")
    if measure_memory and server_pid is None:
        server_pid = find_server_pid(url)
    config["server_pid"] = server_pid
    result = soak = SoakResult(config, references=references, reference_boxes=sum(len(a.scores) for a in references.values()))
    plan = schedule(requests, good, malformed, malformed_share, batch_share, seed)

    lock, finished = threading.Lock(), threading.Event()
    slots = threading.BoundedSemaphore(concurrency)
    responses = np.zeros(requests, np.int64)
    sent_at = np.zeros(requests)
    latencies: Dict[str, List[float]] = {"ok": [], "error": []}
    counters = {"answered": 0}
    warmup_n = max(1, math.ceil(requests * warmup_share))
    for item in plan:
        result.per_kind.setdefault(item.kind, dict(sent=0, images=0, ok=0, error=0, missing=0, wrong=0))
    bar = tqdm(total=requests, desc=f"soak {model} c={concurrency}", unit="req", disable=not progress, dynamic_ncols=True)
    sampler = MemorySampler(server_pid, sample_interval, lambda: counters["answered"]) if measure_memory else None

    def judge(item: Planned, answer, error) -> None:
        """Sort one first response into the counters (under the lock)."""
        counts = result.per_kind[item.kind]
        if error is not None and "DEADLINE_EXCEEDED" in str(error.status()):
            result.missing += 1
            counts["missing"] += 1
            _note(result, f"request {item.index} ({item.kind}): no answer within {timeout} s")
            return
        if error is not None:
            result.answered_error += 1
            counts["error"] += 1
            latencies["error"].append(time.monotonic() - sent_at[item.index])
            status, message = str(error.status()), error.message() or str(error)
            if item.error is None:
                result.good_failed += 1
                counts["wrong"] += 1
                _note(result, f"request {item.index} ({item.kind} {', '.join(item.labels)}): error {status}: {message}")
            elif INVALID not in status or not all(part in message for part in item.error):
                result.wrong_error += 1
                counts["wrong"] += 1
                _note(result, f"request {item.index} ({item.kind}): {status}: {message!r}, expected {INVALID} with {item.error!r}")
            return
        result.answered_ok += 1
        counts["ok"] += 1
        latencies["ok"].append(time.monotonic() - sent_at[item.index])
        if answer.get_response().id != str(item.index):
            result.wrong_id += 1
            counts["wrong"] += 1
            _note(result, f"request {item.index}: the response carries id {answer.get_response().id!r}")
        if item.error is not None:
            result.malformed_accepted += 1
            counts["wrong"] += 1
            _note(result, f"request {item.index} ({item.kind}) was answered with detections, expected {item.error!r}")
            return
        per_image = parse_result(answer)
        if len(per_image) != len(item.labels):
            result.mismatched += 1
            counts["wrong"] += 1
            _note(result, f"request {item.index}: {len(per_image)} results for {len(item.labels)} images")
            return
        bad = False
        for label, detections in zip(item.labels, per_image):
            reference = references[label]
            got = Answer.of(detections)
            what, box_dev, score_dev = compare(got, reference)
            result.compared += 1
            if what is None:
                result.max_box_dev, result.max_score_dev = max(result.max_box_dev, box_dev), max(result.max_score_dev, score_dev)
                result.identical += int(box_dev == 0 and score_dev == 0)
            if what is not None or box_dev > box_tol or score_dev > score_tol:
                result.mismatched += 1
                bad = True
                _note(result, f"request {item.index} ({item.kind}) {label}: "
                              f"{what or f'max |Δbox| {box_dev:.3g} px, max |Δscore| {score_dev:.3g}'}")
        counts["wrong"] += int(bad)

    def on_answer(item: Planned, result=None, error=None) -> None:  # tritonclient calls callback(result=, error=)
        answer = result
        with lock:
            responses[item.index] += 1
            if responses[item.index] > 1:
                soak.duplicated += 1
                _note(soak, f"request {item.index} ({item.kind}): answer number {responses[item.index]}")
                return
            try:
                judge(item, answer, error)
            except Exception as failure:  # noqa: BLE001 — a response we cannot read is a failure, not a lost count
                soak.mismatched += 1
                _note(soak, f"request {item.index} ({item.kind}): cannot read the response: {failure!r}")
            counters["answered"] += 1
            done = counters["answered"]
            bar.update(1)
        if sampler is not None and done == warmup_n:
            sampler.wake.set()  # the warm-up sample, at once
        slots.release()
        if done == requests:
            finished.set()

    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(name) for name in specs.ENSEMBLE_OUTPUTS]
    start = time.monotonic()
    try:
        with sampler or _Nothing():
            for item in plan:
                if not slots.acquire(timeout=timeout + 30):  # no answer frees a slot: stop sending, report it
                    _note(result, f"stalled: no slot freed within {timeout + 30:.0f} s, {result.sent} of {requests} sent")
                    break
                tensor = grpcclient.InferInput(specs.ENSEMBLE_INPUT, [len(item.payloads), 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[p] for p in item.payloads], dtype=np.object_).reshape(-1, 1))
                result.sent += 1
                result.images += len(item.payloads)
                result.per_kind[item.kind]["sent"] += 1
                result.per_kind[item.kind]["images"] += len(item.payloads)
                sent_at[item.index] = time.monotonic()
                try:
                    client.async_infer(model, [tensor], functools.partial(on_answer, item), outputs=outputs,
                                       request_id=str(item.index), parameters=parameters, client_timeout=timeout)
                except InferenceServerException as error:  # refused before it left: its one answer
                    on_answer(item, error=error)
            deadline = time.monotonic() + timeout + 30  # the gRPC deadline answers every request by then
            while counters["answered"] < result.sent and time.monotonic() < deadline:
                finished.wait(0.2)
            result.wall_s = time.monotonic() - start
            time.sleep(0.5)  # a late duplicate would show up now
            if sampler is not None:
                sampler.sample()  # the end sample, after the last answer
        try:
            result.server_ready_after = bool(client.is_server_live() and client.is_model_ready(model))
        except InferenceServerException:
            result.server_ready_after = False
    finally:
        bar.close()
        client.close()

    with lock:
        lost = [i for i in range(result.sent) if responses[i] == 0]
        for i in lost:
            result.missing += 1
            result.per_kind[plan[i].kind]["missing"] += 1
        if lost:
            _note(result, f"{len(lost)} requests never answered, e.g. {lost[:10]}")
    for key, values in latencies.items():
        if values:
            result.latency_ms[f"{key}_p50"] = round(float(np.percentile(values, 50)) * 1000, 1)
            result.latency_ms[f"{key}_p99"] = round(float(np.percentile(values, 99)) * 1000, 1)
    if sampler is not None:
        _memory_summary(result, sampler.samples, warmup_n)
    _checks(result, max_growth)
    if out is not None:
        write_outputs(result, Path(out))
    return result


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _memory_summary(result: SoakResult, samples: List[dict], warmup_n: int) -> None:
    result.memory = samples
    warm = next((s for s in samples if s["answered"] >= warmup_n), None)
    if warm is None or not samples:
        return
    end = samples[-1]
    for metric in MEMORY_METRICS:
        key = f"{metric}_mib"
        setattr(result, f"{metric}_warmup_mib", warm[key])
        setattr(result, f"{metric}_end_mib", end[key])
        setattr(result, f"{metric}_peak_mib", max(s[key] for s in samples))
        setattr(result, f"growth_{metric}", (end[key] - warm[key]) / warm[key])
    result.growth = getattr(result, f"growth_{result.config['memory_metric']}")


def _checks(result: SoakResult, max_growth: float) -> None:
    r, fail = result, result.failures.append
    if r.sent < r.config["requests"]:
        fail(f"stalled: {r.sent} of {r.config['requests']} requests sent")
    if r.missing:
        fail(f"{r.missing} requests got no answer within {r.config['timeout_s']} s")
    if r.duplicated:
        fail(f"{r.duplicated} duplicated answers")
    if r.wrong_id:
        fail(f"{r.wrong_id} answers carry another request's id")
    if r.answered_ok + r.answered_error + r.missing != r.sent:
        fail(f"{r.sent} sent but {r.answered_ok} ok + {r.answered_error} errors + {r.missing} missing")
    if r.good_failed:
        fail(f"{r.good_failed} good requests answered with an error")
    if r.mismatched:
        fail(f"{r.mismatched} good images differ from their reference (tolerance {r.config['box_tol_px']} px, "
             f"{r.config['score_tol']} score)")
    if r.malformed_accepted:
        fail(f"{r.malformed_accepted} malformed requests answered with detections")
    if r.wrong_error:
        fail(f"{r.wrong_error} malformed requests refused without {INVALID} and the expected message")
    if r.server_ready_after is False:
        fail("the server or the model is not ready after the soak")
    if r.config["server_pid"] is not None:
        if r.growth is None:
            fail("no memory sample after the warm-up")
        elif r.growth >= max_growth:
            metric = r.config["memory_metric"]
            fail(f"server {metric.upper()} grew {r.growth:+.1%} after the warm-up ({getattr(r, f'{metric}_warmup_mib'):.1f} → "
                 f"{getattr(r, f'{metric}_end_mib'):.1f} MiB), limit {max_growth:.0%}")


# ---------------------------------------------------------------------------------------------------- outputs


def write_outputs(result: SoakResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"config": result.config, "summary": result.summary(),
                "references": {k: v.to_json() for k, v in result.references.items()}, "memory_samples": result.memory}
    (out / "soak.json").write_text(json.dumps(document, indent=2))
    names = sorted({name for s in result.memory for name in s["rss_by_process_mib"]})
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["t_s", "answered", "rss_mib", "pss_mib", "processes",
                                               *(f"rss_mib:{name}" for name in names)])
        writer.writeheader()
        for sample in result.memory:
            each = {f"rss_mib:{name}": value for name, value in sample["rss_by_process_mib"].items()}
            writer.writerow({**{k: v for k, v in sample.items() if k != "rss_by_process_mib"}, **each})
    if result.memory:
        plot(result, out / "soak.png")


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, config = result.memory, result.config
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("rss_mib", "RSS"), ("pss_mib", "PSS")):
        ax1.plot([s["answered"] for s in samples], [s[key] for s in samples], ".-", ms=3, label=label)
        ax2.plot([s["t_s"] for s in samples], [s[key] for s in samples], ".-", ms=3, label=label)
    warmup = math.ceil(config["requests"] * config["warmup_share"])
    ax1.axvline(warmup, color="gray", ls="--", lw=1, label=f"warm-up ({warmup})")
    warm = getattr(result, f"{config['memory_metric']}_warmup_mib")
    if warm:
        ax1.axhline(warm * (1 + config["max_growth"]), color="red", ls=":", lw=1,
                    label=f"{config['memory_metric'].upper()} limit +{config['max_growth']:.0%}")
    ax1.set(xlabel="requests answered", ylabel="MiB", title="tritonserver + stubs memory")
    ax2.set(xlabel="seconds", ylabel="MiB", title="over time")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    growth = f"{result.growth:+.2%}" if result.growth is not None else "n/a"
    fig.suptitle(f"soak {config['model']}: {result.sent} requests, c={config['concurrency']}, "
                 f"{config['malformed_share']:.0%} malformed — {config['memory_metric'].upper()} growth {growth}, {'PASS' if result.passed else 'FAIL'}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(result: SoakResult) -> str:
    config, r = result.config, result
    lines = [f"{'kind':<26} {'expected':<40} {'sent':>6} {'ok':>6} {'error':>6} {'missing':>7} {'wrong':>6}"]
    for kind, counts in sorted(result.per_kind.items(), key=lambda kv: (kv[0].startswith("malformed"), kv[0])):
        want = "detections = reference" if kind in ("good", "batch_good") else (
            f"{INVALID} IMAGE[i]: …" if kind == "batch_mixed" else
            f"{INVALID} {config['expected_errors'].get(kind.split(':', 1)[-1], '')!r}")
        lines.append(f"{kind:<26} {want:<40} {counts['sent']:>6} {counts['ok']:>6} {counts['error']:>6} "
                     f"{counts['missing']:>7} {counts['wrong']:>6}")
    lines.append(f"{'total':<26} {'':<40} {r.sent:>6} {r.answered_ok:>6} {r.answered_error:>6} {r.missing:>7} "
                 f"{sum(c['wrong'] for c in r.per_kind.values()):>6}")
    lines.append(f"reference: {len(r.references)} images alone, {r.reference_boxes} boxes; under load {r.compared} images "
                 f"compared, {r.identical} bit-identical, max |Δbox| {r.max_box_dev:.3g} px, max |Δscore| "
                 f"{r.max_score_dev:.3g} (tolerance {config['box_tol_px']} px, {config['score_tol']})")
    if not r.reference_boxes:
        lines.append("warning: the references hold no boxes, so only the counts are compared: lower --conf")
    if r.growth is not None:
        lines.append(f"server memory (pid {config['server_pid']} and {r.memory[-1]['processes'] - 1} stubs), after warm-up "
                     f"({config['warmup_share']:.0%} answered) → end, peak; checked: {config['memory_metric'].upper()} growth "
                     f"< {config['max_growth']:.0%}")
        for metric in MEMORY_METRICS:
            lines.append(f"  {metric.upper()} {getattr(r, f'{metric}_warmup_mib'):8.1f} → {getattr(r, f'{metric}_end_mib'):8.1f} "
                         f"MiB, peak {getattr(r, f'{metric}_peak_mib'):8.1f} MiB, growth {getattr(r, f'growth_{metric}'):+.2%}")
    lat = r.latency_ms
    lines.append(f"{r.sent} requests ({r.images} images) in {r.wall_s:.1f} s: {r.sent / max(r.wall_s, 1e-9):.1f} req/s, "
                 f"{r.img_s:.1f} img/s; latency ok p50 {lat.get('ok_p50', 0):.0f} ms p99 {lat.get('ok_p99', 0):.0f} ms, "
                 f"errors p50 {lat.get('error_p50', 0):.0f} ms")
    lines += [f"  {p}" for p in r.problems]
    lines.append("PASS" if r.passed else "FAIL: " + "; ".join(r.failures))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-u", "--url", default="localhost:8001", help="gRPC host:port (default localhost:8001)")
    parser.add_argument("-m", "--model", default=specs.YOLOV7.ensemble_name)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--malformed-share", type=float, default=0.10)
    parser.add_argument("--batch-share", type=float, default=0.02,
                        help="share of [B, 1] batch requests (half all good, half with one malformed item); 0: none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--max-growth", type=float, default=0.10, help="memory growth limit after the warm-up (default 0.10)")
    parser.add_argument("--memory-metric", choices=MEMORY_METRICS, default="pss",
                        help="what --max-growth checks: pss (default; shared pages counted once) or rss (see above)")
    parser.add_argument("--warmup-share", type=float, default=0.20, help="share of requests answered before the "
                        "warm-up memory sample (default 0.20)")
    parser.add_argument("--server-pid", type=int, help="tritonserver pid (default: the local one on the URL's port)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check (remote server)")
    parser.add_argument("--conf", type=float, help="confidence threshold request parameter (default: the model's)")
    parser.add_argument("--box-tol", type=float, default=1e-3, help="pixels (default 1e-3)")
    parser.add_argument("--score-tol", type=float, default=1e-4)
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--out", type=Path, default=Path("build/soak"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = run_soak(args.url, args.model, args.requests, args.concurrency, args.malformed_share, args.batch_share,
                          args.seed, args.timeout, args.max_growth, args.warmup_share, args.memory_metric, args.server_pid,
                          not args.no_memory, args.conf, args.box_tol, args.score_tol, args.sample_interval,
                          progress=not args.no_progress, out=args.out)
    except SoakError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report(result))
    print(f"wrote {args.out}/soak.json, soak.csv, soak.png")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

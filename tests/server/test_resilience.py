"""The client under faults, against real tritonserver processes: several servers load-balanced (one stopped and
brought back), by the client (a list of URLs) and by gRPC (one target naming both), a server restarted under load,
and a Python backend stub killed under load; and gRPC's own retry inside the channel, counted by a gRPC server
that refuses every request.

Each server here loads only the small ensemble (``--model-control-mode=explicit``), so a start takes a few
seconds. Answers are checked against the independent reference (tests/reference.py). The stub-kill test asserts
what Triton 2.51 was measured to do, so that a different behaviour (a fix, or a regression) shows up here; run
with ``-s`` to see the measured facts (lines starting ``MEASURED``; docs/client.md has the table).
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from yolo_triton.client import (
    BackendUnhealthy,
    ClientError,
    DeadlineExceeded,
    Detector,
    ModelNotReady,
    RetryPolicy,
    ServerError,
    ServerUnreachable,
)
from yolo_triton.serving.supervise import python_stubs
from yolo_triton.serving.triton import TritonServer

from ..helpers import CONF, MODEL, PHOTOS, ROOT, SMALL, assert_matches, child_pids, client_for, start_serve, stop_serve

FLAGS = ["--log-verbose=0", "--model-control-mode=explicit", f"--load-model={MODEL}"]
PATIENT = RetryPolicy(attempts=None, initial_backoff=0.1, max_backoff=1.0, deadline=90.0)

pytestmark = pytest.mark.timeout(240)


def measured(what: str, **facts) -> None:
    print(f"MEASURED {what}: " + ", ".join(f"{k}={v}" for k, v in facts.items()))


def start_server(repository, log_dir: Path, name: str, ports=None) -> TritonServer:
    return TritonServer(repository, ports=ports, log_path=log_dir / f"{name}.log", extra=FLAGS).start()


def restarted(server: TritonServer, repository, log_dir: Path, name: str) -> TritonServer:
    """A fresh server on the same ports (the old one stopped first if it still runs)."""
    server.stop()
    return start_server(repository, log_dir, name, (server.http_port, server.grpc_port, server.metrics_port))


@pytest.fixture(scope="module")
def data(photos, reference_small):
    """(encoded photos, the reference's answer for each)."""
    images = [photos[name] for name in PHOTOS]
    return images, [reference_small.detect(image, conf=CONF) for image in images]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("resilience")


@pytest.fixture(scope="module")
def pair(repository, log_dir):
    """Two servers, as a list the tests may replace entries of (a restart makes a new TritonServer)."""
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(start_server(repository, log_dir, name))
        yield servers
    finally:
        for server in servers:
            server.stop()


def ensure_up(pair, index, repository, log_dir):
    if not pair[index].is_ready():
        pair[index] = restarted(pair[index], repository, log_dir, f"{'ab'[index]}_again")
    return pair[index]


def answered_once(results, images, expected) -> list:
    """``results``: ItemResults of items ``i`` → ``images[i % len(images)]``; exactly one each, every answer equal to
    the reference. Returns the failed ones."""
    by_index = collections.Counter(r.index for r in results)
    assert set(by_index.values()) == {1}, "an item got no result or several"
    for result in results:
        if result.ok:
            assert_matches(result.detections, expected[result.index % len(images)])
    return [r for r in results if not r.ok]


def check_answers(results, images, expected):
    """As ``answered_once``, and all answered; returns the items' indices, sorted."""
    failed = answered_once(results, images, expected)
    assert not failed, f"item {failed[0].index}: {failed[0].error!r}"
    return sorted(r.index for r in results)


# ------------------------------------------------------------------------------------------ gRPC's own retry


class _Refusing(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A gRPC server with Triton's inference service that refuses every request with ``code``, counting the tries
    that reach it: gRPC's retries inside a call are invisible to the client, here the server sees them."""

    code = grpc.StatusCode.UNAVAILABLE
    tries = 0

    def ModelInfer(self, request, context):  # noqa: N802 — the service's method name
        self.tries += 1
        context.abort(self.code, "refusing, as told")


@pytest.fixture(scope="module")
def refusing():
    from concurrent import futures

    servicer, server = _Refusing(), grpc.server(futures.ThreadPoolExecutor(4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("code, policy, size, tries, calls, error", [
    # one URL, a policy gRPC can carry whole: gRPC makes the tries inside one call, the client counts them
    ("UNAVAILABLE", RetryPolicy(), 1000, 4, 1, ServerUnreachable),
    ("UNAVAILABLE", RetryPolicy(), 2 << 20, 4, 1, ServerUnreachable),  # over gRPC's default 256 KiB retry buffer
    ("NOT_FOUND", RetryPolicy(attempts=3, initial_backoff=0.05), 1000, 3, 1, ModelNotReady),
    ("INVALID_ARGUMENT", RetryPolicy(), 1000, 1, 1, ServerError),  # a refusal: never retried
    # more tries than gRPC's cap of 5, or a deadline only: every try is ours, one call each
    ("UNAVAILABLE", RetryPolicy(attempts=8, initial_backoff=0.01), 1000, 8, 8, ServerUnreachable),
    ("UNAVAILABLE", RetryPolicy(attempts=None, initial_backoff=0.05, max_backoff=0.2, deadline=0.6), 1000, None, None,
     DeadlineExceeded),
    ("UNAVAILABLE", None, 1000, 1, 1, ServerUnreachable),  # no retries: one try
])
def test_grpc_retry_inside_the_channel(refusing, code, policy, size, tries, calls, error):
    servicer, url = refusing
    servicer.code, servicer.tries = getattr(grpc.StatusCode, code), 0
    with Detector(url, MODEL, check=False, retry=policy) as detector:
        with pytest.raises(error) as raised:
            detector.detect(b"x" * size)
        sent = detector.requests_sent[url]
    counted = raised.value.attempts if isinstance(raised.value, DeadlineExceeded) else tries
    if tries and tries > 1:
        assert f"gave up after {tries} attempts over" in str(raised.value)
    assert servicer.tries == counted and sent == (calls or counted)  # what the client counted is what reached the server


def test_grpc_retry_inside_the_channel_per_stream_item_and_with_a_list(refusing):
    servicer, url = refusing
    servicer.code, servicer.tries = grpc.StatusCode.UNAVAILABLE, 0
    with Detector(url, MODEL, check=False, retry=RetryPolicy(initial_backoff=0.01)) as detector:
        results = list(detector.stream([b"a", b"b", b"c"], concurrency=2))
        assert sorted(r.index for r in results) == [0, 1, 2]
        assert all(isinstance(r.error, ServerUnreachable) and r.error.tries == 4 for r in results)
        assert servicer.tries == 12 and detector.requests_sent == {url: 3}
    # several URLs (here two names of the same server): no retry inside the channels, our failover makes the tries
    servicer.tries = 0
    port = url.rsplit(":", 1)[1]
    with Detector([url, f"localhost:{port}"], MODEL, check=False, retry=RetryPolicy(initial_backoff=0.01)) as detector:
        with pytest.raises(ServerUnreachable, match="gave up after 4 attempts"):
            detector.detect(b"x")
        assert servicer.tries == 4 and sorted(detector.requests_sent.values()) == [2, 2]


# ------------------------------------------------------------------------------------------ several servers


def test_round_robin_failover_and_return(pair, repository, log_dir, data):
    images, expected = data
    a, b = pair
    retry = RetryPolicy(attempts=4, initial_backoff=0.05, max_backoff=0.5, deadline=20.0)
    with Detector([a.grpc_url, b.grpc_url], MODEL, retry=retry, cooldown=1.0) as detector:
        assert detector.urls == [a.grpc_url, b.grpc_url] and detector.url == a.grpc_url
        many = detector.stream(images * 4, concurrency=4, conf=CONF)
        assert check_answers(list(many), images, expected) == list(range(4 * len(images)))
        for image, want in zip(images, expected):  # synchronous requests alternate too
            assert_matches(detector.detect(image, conf=CONF), want)
        sent = detector.requests_sent
        measured("round robin over 2 healthy servers", sent=sent)
        assert sent[a.grpc_url] > 0 and sent[b.grpc_url] > 0 and abs(sent[a.grpc_url] - sent[b.grpc_url]) <= 1

        b.stop()  # requests keep succeeding on a; those that hit b are retried there at once
        before = dict(detector.requests_sent)
        results = list(detector.stream(images * 4, concurrency=4, conf=CONF))
        check_answers(results, images, expected)
        for image, want in zip(images, expected):
            assert_matches(detector.detect(image, conf=CONF), want)
        status = {s["url"]: s for s in detector.servers()}
        to_b = detector.requests_sent[b.grpc_url] - before[b.grpc_url]
        measured("one of 2 servers stopped", requests_to_stopped=to_b, failed_there=status[b.grpc_url]["failed"],
                 answered=len(results) + len(images))
        assert not status[b.grpc_url]["healthy"] and status[b.grpc_url]["failed"] >= 1
        assert to_b <= 2, "the stopped server is skipped until its cool-down is over"
        assert detector.requests_sent[a.grpc_url] - before[a.grpc_url] >= len(results) + len(images)

        pair[1] = b = restarted(b, repository, log_dir, "b_restarted")  # a fresh server on the same ports
        time.sleep(1.2)  # the cool-down: then a health check, and b is back in the rotation
        before = dict(detector.requests_sent)
        check_answers(list(detector.stream(images * 2, concurrency=4, conf=CONF)), images, expected)
        back = detector.requests_sent[b.grpc_url] - before[b.grpc_url]
        measured("stopped server back on the same ports", requests_to_it=back, of=2 * len(images))
        assert back >= len(images) - 1 and {s["url"]: s["healthy"] for s in detector.servers()}[b.grpc_url]


def test_round_robin_over_http(pair, repository, log_dir, data):
    images, expected = data
    a, b = ensure_up(pair, 0, repository, log_dir), ensure_up(pair, 1, repository, log_dir)
    with Detector(f"{a.http_url},{b.http_url}", MODEL, "http") as detector:  # comma-separated, as -u takes it
        check_answers(list(detector.stream(images * 2, concurrency=4, conf=CONF)), images, expected)
        assert sorted(detector.requests_sent.values()) == [len(images), len(images)]


def test_cli_several_urls_and_retry_flags(pair, repository, log_dir, data, photo_dir):
    from ..helpers import json_records, run_cli

    a, b = ensure_up(pair, 0, repository, log_dir), ensure_up(pair, 1, repository, log_dir)
    files = sorted(photo_dir.glob("*.*"))
    run = run_cli("image", *files, "-m", MODEL, "-u", f"{a.grpc_url},{b.grpc_url}", "--json", "--conf", CONF,
                  "--retries", 5, "--retry-deadline", 10, "--backoff", 0.05, "--max-backoff", 0.5, "--cooldown", 1)
    assert run.returncode == 0, run.stderr
    assert [r["file"] for r in json_records(run.stdout)] == [str(f) for f in files]
    run = run_cli("dummy", "-u", a.grpc_url, "--backoff", 3, "--max-backoff", 1)
    assert run.returncode == 2 and "--backoff must be between 0 and --max-backoff" in run.stderr


def successes(server) -> int:
    """Requests the server's Triton answered for the ensemble (its own inference statistics: the truth of the spread)."""
    _, client = client_for(server, "grpc")
    with client:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def settled_spread(servers, before, expected: int, wait_s: float = 5.0) -> tuple:
    """Each server's successes since ``before``. Triton counts an ensemble request once its last step has
    finished, which can be just after the client holds the answer: poll until the counts reach ``expected``."""
    deadline = time.monotonic() + wait_s
    while True:
        spread = tuple(successes(s) - b for s, b in zip(servers, before))
        if sum(spread) >= expected or time.monotonic() > deadline:
            return spread
        time.sleep(0.1)


def model_ready(server) -> bool:
    """The server's own answer to "is the ensemble ready?" (a plain tritonclient call)."""
    _, client = client_for(server, "grpc")
    with client:
        return client.is_model_ready(MODEL)


def test_grpc_round_robin_one_target_and_a_stopping_server(pair, repository, log_dir, data):
    """One gRPC target naming both servers (``ipv4:a,b``): one channel, balanced by gRPC's round robin, which the
    client cannot count per server, so the spread is read from each server's inference statistics. A server stopped
    under load keeps its connection open while it shuts down and refuses requests (NOT_FOUND, "Server is
    stopping"): gRPC's balancer keeps picking it and gRPC's retry (4 tries under the default policy) may land on it
    each time, so some items fail, each after gRPC's 4 tries. The same fault with the two servers given as a list
    (a channel each, our balancing): the first refusal takes the server out for its cool-down and every item is
    answered. Why a list of URLs stays ours (docs/client.md)."""
    images, expected = data
    a, b = ensure_up(pair, 0, repository, log_dir), ensure_up(pair, 1, repository, log_dir)
    target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    with Detector(target, MODEL) as detector:
        assert detector.urls == [target]  # one channel: gRPC balances inside it
        before = successes(a), successes(b)
        check_answers(list(detector.stream(images * 4, concurrency=4, conf=CONF)), images, expected)
        spread = settled_spread((a, b), before, 4 * len(images))
        measured("gRPC round robin over one ipv4: target", spread=spread, counted_by_client=detector.requests_sent)
        assert sum(spread) == 4 * len(images) and min(spread) >= len(images) - 2
        assert detector.requests_sent == {target: 4 * len(images)}

        results, _ = _stream_while(detector, images, b.stop, after=24)
        failed = answered_once(results, images, expected)
        measured("one server of the target stopped under load (default policy)", items=len(results), failed=len(failed),
                 errors=dict(collections.Counter(type(r.error).__name__ for r in failed)))
        assert all(isinstance(r.error, (ModelNotReady, ServerUnreachable)) and r.error.tries == 4 for r in failed)

        pair[1] = b = restarted(b, repository, log_dir, "b_target")
        time.sleep(1.5)  # gRPC's reconnect backoff is at most 1 s: then b is back in the rotation
        before_b = successes(b)
        check_answers(list(detector.stream(images * 2, concurrency=4, conf=CONF)), images, expected)
        measured("the stopped server back on its ports", requests_to_it=successes(b) - before_b, of=2 * len(images))
        assert successes(b) - before_b >= 2

    with Detector([a.grpc_url, b.grpc_url], MODEL) as detector:  # the same fault, the servers as a list
        results, _ = _stream_while(detector, images, b.stop, after=24)
        check_answers(results, images, expected)
        measured("one server of a list stopped under load (default policy)", items=len(results), failed=0,
                 refused_there=detector.servers()[1]["failed"])


# ------------------------------------------------------------------------------------------ restart under load


def _stream_while(detector, images, during, after: int = 16, limit: int = 3000, concurrency: int = 8):
    """Stream items (photo ``i % len``) until ``during`` (a thread target, started after the first results) has
    finished, then ``after`` more; returns (results, seconds ``during`` ran)."""
    first_results, finished, took = threading.Event(), threading.Event(), {}

    def fault():
        first_results.wait(60)
        start = time.monotonic()
        try:
            during()
        finally:
            took["s"] = time.monotonic() - start
            finished.set()

    def items():
        extra = after
        for i in range(limit):
            if finished.is_set():
                if extra == 0:
                    return
                extra -= 1
            yield images[i % len(images)]

    thread = threading.Thread(target=fault, daemon=True)
    thread.start()
    results = []
    for result in detector.stream(items(), concurrency=concurrency, conf=CONF):
        results.append(result)
        if len(results) == 16:
            first_results.set()
    first_results.set()
    thread.join(120)
    assert finished.is_set(), "the fault did not finish"
    return results, took.get("s")


def test_server_restart_under_load(pair, repository, log_dir, data):
    images, expected = data
    a = ensure_up(pair, 0, repository, log_dir)

    def restart():
        pair[0] = restarted(pair[0], repository, log_dir, "a_restarted")

    with Detector(a.grpc_url, MODEL, retry=PATIENT) as detector:
        started = time.monotonic()
        results, downtime = _stream_while(detector, images, restart)
        elapsed = time.monotonic() - started
        check_answers(results, images, expected)  # every item exactly once, each equal to the reference
        status = detector.servers()[0]
        measured("server restarted under load (retries on)", items=len(results), restart_s=round(downtime, 1),
                 transient_failures=status["failed"], requests=status["sent"], total_s=round(elapsed, 1))
        assert status["failed"] >= 1 and status["sent"] > len(results)  # it did fail over the restart, and retried


def test_server_stopped_under_load_without_retries(pair, repository, log_dir, data):
    images, expected = data
    a = ensure_up(pair, 0, repository, log_dir)
    with Detector(a.grpc_url, MODEL, retry=None, timeout=30) as detector:
        started = time.monotonic()
        results, _ = _stream_while(detector, images, a.stop, after=24, limit=600)
        elapsed = time.monotonic() - started
        failed = answered_once(results, images, expected)
        kinds = collections.Counter(f"{type(r.error).__name__}: {str(r.error)[:220]}" for r in failed)
        measured("server stopped under load (no retries)", items=len(results), failed=len(failed),
                 seconds=round(elapsed, 1), errors=dict(kinds))
        assert len(failed) >= 24 and all(isinstance(r.error, (ServerUnreachable, ModelNotReady)) for r in failed)
        assert detector.servers()[0]["sent"] == len(results)  # no retries: one request per item

        # the server is down: a short deadline ends with the deadline error, saying how many attempts over how long
        detector.retry = RetryPolicy(attempts=None, initial_backoff=0.1, max_backoff=0.4, deadline=1.5)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"no success within the 1.5 s retry deadline: \d+ attempts over") as raised:
            detector.detect(images[0])
        took = time.monotonic() - started
        assert isinstance(raised.value.last_error, ServerUnreachable) and raised.value.attempts >= 3 and took < 3.0
        assert isinstance(raised.value, ClientError)
        detector.retry = RetryPolicy(attempts=3, initial_backoff=0.05, deadline=None)
        with pytest.raises(ServerUnreachable, match=r"gave up after 3 attempts over"):
            detector.detect(images[0])
        measured("deadline 1.5 s, server down", attempts=raised.value.attempts, seconds=round(took, 2))
        # a bad image is never retried, whatever the policy: here the refusal would take the deadline otherwise
        pair[0] = restarted(a, repository, log_dir, "a_after_stop")
        detector.retry = PATIENT
        started = time.monotonic()
        with pytest.raises(ClientError, match="cannot decode"):
            detector.detect(b"not an image")
        assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------------ a backend stub killed


def stubs_by_name(server_pid: int) -> dict:
    """The stubs of a server that is not reloading (one per instance name): instance → (pid, shared-memory region)."""
    return {name: (pid, region) for pid, (name, region) in python_stubs(server_pid).items()}


def _kill_stub(server: TritonServer, instance: str) -> None:
    stubs = stubs_by_name(server.process.pid)
    assert instance in stubs, f"no stub {instance} under server {server.process.pid}: {sorted(stubs)}"
    os.kill(stubs[instance][0], signal.SIGKILL)


def test_python_stub_killed_under_load(repository, log_dir, data):
    """Triton 2.51 (CPU, embedded): a SIGKILLed Python backend stub is not restarted, nothing is logged at
    --log-verbose=0, the model stays READY, and each request routed to the dead instance fails after about a
    second with INTERNAL "Stub process '<instance>' is not healthy." With 2 preprocess instances the other one
    keeps answering (retries succeed); with the single postprocess instance every request fails, and the client
    gives up with the deadline error. The server then cannot unload the model: a clean stop hangs."""
    images, expected = data
    server = start_server(repository, log_dir, "stub_kill")
    stubs = stubs_by_name(server.process.pid)
    try:
        assert {"yolov7_small_preprocess_0_0", "yolov7_small_preprocess_0_1", "yolov7_small_postprocess_0_0"} <= set(stubs)

        # 1. without retries: what the in-flight and later requests get
        with Detector(server.grpc_url, MODEL, retry=None, timeout=30) as detector:
            def kill_and_watch():
                _kill_stub(server, "yolov7_small_preprocess_0_0")
                time.sleep(6)

            results, _ = _stream_while(detector, images, kill_and_watch, after=8)
            failed = answered_once(results, images, expected)
            messages = collections.Counter(str(r.error) for r in failed)
            alive = stubs_by_name(server.process.pid)
            ready = model_ready(server)
            measured("preprocess stub 0_0 SIGKILLed (2 instances, no retries)", items=len(results), failed=len(failed),
                     messages=dict(messages), model_ready_after=ready, stub_restarted="yolov7_small_preprocess_0_0" in alive)
            assert failed, "no request failed after the stub was killed"
            assert all(isinstance(r.error, BackendUnhealthy) for r in failed)
            assert set(messages) == {"server error (INTERNAL): in ensemble 'yolov7_small_e2e', Stub process "
                                     "'yolov7_small_preprocess_0_0' is not healthy."}
            assert len(failed) < len(results) / 3, "the other preprocess instance keeps answering"
            assert "yolov7_small_preprocess_0_0" not in alive, "Triton restarted the stub (2.51 did not)"
            assert ready, "the model is still reported READY"

        # 2. with retries: every item ends with one answer equal to the reference
        retry = RetryPolicy(attempts=8, initial_backoff=0.05, max_backoff=0.5, deadline=30.0)
        with Detector(server.grpc_url, MODEL, retry=retry, timeout=30) as detector:
            started = time.monotonic()
            results = list(detector.stream(images * 12, concurrency=8, conf=CONF))
            check_answers(results, images, expected)
            measured("preprocess instance dead, retries on", items=len(results), retried=detector.servers()[0]["failed"],
                     seconds=round(time.monotonic() - started, 1))

        # 3. the only postprocess instance killed: every request fails; the client ends each item with the deadline
        # error (after a few tries), not a hang
        _kill_stub(server, "yolov7_small_postprocess_0_0")
        retry = RetryPolicy(attempts=None, initial_backoff=0.1, max_backoff=0.5, deadline=3.0)
        with Detector(server.grpc_url, MODEL, retry=retry, timeout=30) as detector:
            started = time.monotonic()
            results = list(detector.stream(images * 3, concurrency=8, conf=CONF))
            took = time.monotonic() - started
            assert sorted(r.index for r in results) == list(range(3 * len(images)))
            assert all(isinstance(r.error, DeadlineExceeded) for r in results)
            last = collections.Counter(str(r.error.last_error) for r in results)
            dead = "server error (INTERNAL): in ensemble 'yolov7_small_e2e', Stub process '{}' is not healthy."
            assert all(isinstance(r.error.last_error, BackendUnhealthy) for r in results)
            assert dead.format("yolov7_small_postprocess_0_0") in last  # the dead preprocess instance is still there too
            assert set(last) <= {dead.format("yolov7_small_postprocess_0_0"), dead.format("yolov7_small_preprocess_0_0")}
            ready = model_ready(server)
            measured("postprocess stub SIGKILLed (1 instance, deadline 3 s)", items=len(results),
                     failed=len(results), attempts=sorted({r.error.attempts for r in results}), seconds=round(took, 1),
                     model_ready_after=ready, last_errors=dict(last))
            assert took < 30 and ready

        log = server.log_path.read_text(errors="replace")
        reported = [line for line in log.splitlines() if "stub" in line.lower() or "unhealthy" in line.lower()]
        measured("server log about the stubs (--log-verbose=0)", lines=reported)
        assert reported == [], "Triton 2.51 logged nothing about the dead stubs"

        # a clean stop (SIGINT) waits for the dead stubs' models to unload, which never happens (exit timeout 30 s)
        started = time.monotonic()
        server.stop(timeout=5)  # SIGINT, then SIGKILL of the whole process group after 5 s
        stop_s = time.monotonic() - started
        measured("clean stop after the kills", seconds=round(stop_s, 1), needed_sigkill=stop_s >= 5)
        assert stop_s >= 5, "the server stopped cleanly despite the dead stubs"
    finally:
        server.stop(timeout=5)
        for _, region in stubs.values():  # killed stubs (and a SIGKILLed server) leave their shared memory behind
            if region and Path("/dev/shm", region).exists():
                Path("/dev/shm", region).unlink()


def test_serve_stops_loudly_when_a_stub_dies(repository, log_dir):
    """`make serve` (tools/serve.py) does what Triton does not: a Python backend stub killed while the server is
    ready stops the server with exit code 3 and a FATAL line naming the instance, so that a supervisor restarts it,
    instead of a READY model failing part of its requests forever. Neither a reload with fewer instances nor a
    normal Ctrl-C stop is mistaken for it."""
    import json

    import tritonclient.grpc as grpcclient

    log = log_dir / "serve_watchdog.log"
    process, ports = start_serve(repository, log, "--profile", "open")
    try:
        time.sleep(3)  # the watchdog polls every second: let it see the ready server's stubs once
        # a reload with fewer instances (a config override, as tools/batching.py loads) is no death: one of the two
        # stubs goes for good — Triton updates the model in place and keeps either instance, 0_0 or 0_1 — and the
        # server stays up
        preprocess = f"{SMALL.name}_preprocess"
        client = grpcclient.InferenceServerClient(f"localhost:{ports['grpc']}")
        config = client.get_model_config(preprocess, as_json=True)["config"]
        config["instance_group"][0]["count"] = 1
        client.load_model(preprocess, config=json.dumps(config))
        time.sleep(4)
        stubs = [(name, pid) for pid, (name, _) in python_stubs(_server_child(process.pid, log)).items()
                 if name.startswith(preprocess)]
        assert process.poll() is None and len(stubs) == 1, log.read_text(errors="replace")[-2000:]
        (kept, pid), = stubs
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)  # the reloaded model's stub: still watched
        code = process.wait(60)
        took = time.monotonic() - started
    finally:
        stop_serve(process)
    text = log.read_text(errors="replace")
    measured("serve.py after a stub was killed", exit_code=code, seconds=round(took, 1))
    assert code == 3, text[-2000:]
    assert f"FATAL: the Python backend stub of model instance {kept} (pid {pid})" in text
    assert took < 40

    # a hang-up (terminal closed) stops the server cleanly too, and is not taken for a death
    clean = log_dir / "serve_clean.log"
    process, _ = start_serve(repository, clean, "--profile", "open")
    server_pid = _server_child(process.pid, clean)
    stop_serve(process, number=signal.SIGHUP)
    assert process.returncode == 0 and "FATAL" not in clean.read_text(errors="replace")
    assert not Path(f"/proc/{server_pid}").exists() or "Z" in Path(f"/proc/{server_pid}/stat").read_text().split()[2]


def _server_child(serve_pid: int, log: Path) -> int:
    """The tritonserver process that serve.py started."""
    for pid in child_pids(serve_pid):
        if "tritonserver" in Path(f"/proc/{pid}/stat").read_text():
            return pid
    raise AssertionError(f"no tritonserver under serve.py {serve_pid}:\n" + log.read_text(errors="replace")[-3000:])


def test_mps_client_check_without_a_cuda_driver_says_why():
    """The CUDA client serve runs under a fresh MPS daemon (driver calls through ctypes, no torch import) on a host
    without the driver: it fails, and its message names what is missing (serve prints it, or stops with it)."""
    from yolo_triton.serving import mps

    if ctypes_finds("libcuda.so.1"):
        pytest.skip("this host has the CUDA driver (tests/gpu runs the check under MPS)")
    done = subprocess.run([sys.executable, "-c", mps.CLIENT_CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no CUDA driver" in done.stderr and "libcuda.so.1" in done.stderr, done.stderr
    assert "torch" not in mps.CLIENT_CHECK


def ctypes_finds(library: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(library)
        return True
    except OSError:
        return False


def test_serve_mps_without_the_driver_says_so(repository, tmp_path):
    """`make serve` with ``--mps on`` on a host without the NVIDIA driver's MPS control: a clear stop before any server starts
    (the daemon itself runs in tests/test_gpu.py on the GPU machine)."""
    from yolo_triton.serving import mps

    if any((Path(d) / mps.CONTROL).exists() for d in (*mps.DRIVER_BINARIES, *os.environ["PATH"].split(os.pathsep))):
        pytest.skip("this host has the MPS control binary")
    done = subprocess.run([sys.executable, "-m", "yolo_triton.serving.serve", "--repository", str(repository),
                           "--models", SMALL.name, "--profile", "open", "--mps", "on"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "nvidia-cuda-mps-control is not on PATH" in done.stderr and "serve with --mps off" in done.stderr
    assert "Started GRPCInferenceService" not in done.stdout + done.stderr  # Triton never ran


def test_serve_mps_auto_on_a_cpu_host_serves_without_it(repository, log_dir):
    """`make serve` with ``--mps auto`` (the GPU preset's) on a host without a GPU: served as usual, no daemon."""
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count():
        pytest.skip("a GPU host: auto would start the daemon (tests/test_gpu.py covers MPS there)")
    log = log_dir / "serve_mps_auto.log"
    process, _ = start_serve(repository, log, "--profile", "open", "--mps", "auto")
    try:
        assert process.poll() is None
    finally:
        stop_serve(process)
    text = log.read_text()
    assert "MPS daemon on" not in text and "Started GRPCInferenceService" in text

"""The client under faults, against real tritonserver processes: several servers load-balanced (one stopped and
brought back), a server restarted under load, and a Python backend stub killed under load.

Each server here loads only the small ensemble (``--model-control-mode=explicit``), so a start takes a few
seconds. Answers are checked against the independent reference (tests/reference.py). The stub-kill test asserts
what Triton 2.51 was measured to do, so that a different behaviour (a fix, or a regression) shows up here; run
with ``-s`` to see the measured facts (lines starting ``MEASURED``).
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

import pytest

from yolo_triton.client import (
    BackendUnhealthy,
    ClientError,
    DeadlineExceeded,
    Detector,
    ModelNotReady,
    RetryPolicy,
    ServerUnreachable,
)
from yolo_triton.server import TritonServer, python_stubs

from .helpers import ROOT, child_pids, start_serve, stop_serve
from .test_client import CONF, MODEL, PHOTOS, assert_matches, photo_dir  # noqa: F401 — photo_dir: a fixture

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


def check_answers(results, images, expected):
    """``results``: ItemResults of items ``i`` → ``images[i % len(images)]``; exactly one each, all answered."""
    by_index = collections.Counter(r.index for r in results)
    assert set(by_index.values()) == {1}, "an item got no result or several"
    for result in results:
        assert result.ok, f"item {result.index}: {result.error!r}"
        assert_matches(result.detections, expected[result.index % len(images)])
    return sorted(by_index)


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
    from .test_client import json_records, run_cli

    a, b = ensure_up(pair, 0, repository, log_dir), ensure_up(pair, 1, repository, log_dir)
    files = sorted(photo_dir.glob("*.*"))
    run = run_cli("image", *files, "-m", MODEL, "-u", f"{a.grpc_url},{b.grpc_url}", "--json", "--conf", CONF,
                  "--retries", 5, "--retry-deadline", 10, "--backoff", 0.05, "--max-backoff", 0.5, "--cooldown", 1)
    assert run.returncode == 0, run.stderr
    assert [r["file"] for r in json_records(run.stdout)] == [str(f) for f in files]
    run = run_cli("dummy", "-u", a.grpc_url, "--backoff", 3, "--max-backoff", 1)
    assert run.returncode == 2 and "--backoff must be between 0 and --max-backoff" in run.stderr


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
        assert set(collections.Counter(r.index for r in results).values()) == {1}
        failed = [r for r in results if not r.ok]
        for result in results:
            if result.ok:
                assert_matches(result.detections, expected[result.index % len(images)])
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


def _kill_stub(server: TritonServer, instance: str) -> None:
    stubs = python_stubs(server.process.pid)
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
    stubs = python_stubs(server.process.pid)
    try:
        assert {"yolov7_small_preprocess_0_0", "yolov7_small_preprocess_0_1", "yolov7_small_postprocess_0_0"} <= set(stubs)

        # 1. without retries: what the in-flight and later requests get
        with Detector(server.grpc_url, MODEL, retry=None, timeout=30) as detector:
            def kill_and_watch():
                _kill_stub(server, "yolov7_small_preprocess_0_0")
                time.sleep(6)

            results, _ = _stream_while(detector, images, kill_and_watch, after=8)
            failed = [r for r in results if not r.ok]
            assert set(collections.Counter(r.index for r in results).values()) == {1}
            for result in results:
                if result.ok:
                    assert_matches(result.detections, expected[result.index % len(images)])
            messages = collections.Counter(str(r.error) for r in failed)
            alive = python_stubs(server.process.pid)
            ready = detector._call("is_model_ready", MODEL)
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
            ready = detector._call("is_model_ready", MODEL)
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
    instead of a READY model failing part of its requests forever. A normal Ctrl-C stop is not mistaken for it."""
    log = log_dir / "serve_watchdog.log"
    process, _ = start_serve(repository, log, "--profile", "open")
    try:
        stubs = python_stubs(_server_child(process.pid))
        time.sleep(3)  # the watchdog polls every second: let it see the ready server's stubs once
        started = time.monotonic()
        os.kill(stubs["yolov7_small_preprocess_0_1"][0], signal.SIGKILL)
        code = process.wait(60)
        took = time.monotonic() - started
    finally:
        stop_serve(process)
    text = log.read_text(errors="replace")
    measured("serve.py after a stub was killed", exit_code=code, seconds=round(took, 1))
    assert code == 3, text[-2000:]
    assert "FATAL: the Python backend stub of model instance yolov7_small_preprocess_0_1" in text
    assert took < 40

    # a hang-up (terminal closed) stops the server cleanly too, and is not taken for a death
    clean = log_dir / "serve_clean.log"
    process, _ = start_serve(repository, clean, "--profile", "open")
    server_pid = _server_child(process.pid)
    stop_serve(process, number=signal.SIGHUP)
    assert process.returncode == 0 and "FATAL" not in clean.read_text(errors="replace")
    assert not Path(f"/proc/{server_pid}").exists() or "Z" in Path(f"/proc/{server_pid}/stat").read_text().split()[2]


def _server_child(serve_pid: int) -> int:
    """The tritonserver process that serve.py started."""
    for pid in child_pids(serve_pid):
        if "tritonserver" in Path(f"/proc/{pid}/stat").read_text():
            return pid
    raise AssertionError(f"no tritonserver under serve.py {serve_pid}")


def test_serve_mps_without_the_driver_says_so(repository, tmp_path):
    """`make serve MPS=1` on a host without the NVIDIA driver's MPS control: a clear stop before any server starts
    (the daemon itself runs in tests/test_gpu.py on the GPU machine)."""
    from yolo_triton import mps

    if any((Path(d) / mps.CONTROL).exists() for d in (*mps.DRIVER_BINARIES, *os.environ["PATH"].split(os.pathsep))):
        pytest.skip("this host has the MPS control binary")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "serve.py"), "--repository", str(repository),
                           "--profile", "open", "--mps", "on"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "nvidia-cuda-mps-control is not on PATH" in done.stderr and "serve with MPS=0" in done.stderr
    assert "Started GRPCInferenceService" not in done.stdout + done.stderr  # Triton never ran


def test_serve_mps_auto_on_a_cpu_host_serves_without_it(repository, log_dir):
    """`make serve RUNTIME=torch` (MPS=auto, the default) on a host without a GPU: served as usual, no daemon."""
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

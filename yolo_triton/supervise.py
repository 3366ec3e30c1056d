"""Run tritonserver as a child and stop it loudly when a Python backend stub dies.

    python3 -m yolo_triton.supervise --http-port 8000 -- tritonserver --model-repository=/models ...

Triton 2.51 neither restarts a Python backend stub that dies nor marks its model unready (measured:
tests/test_resilience.py): the model stays READY while the requests routed to that instance fail. The supervisor
passes SIGINT/SIGTERM on to the server, watches its stubs (``server.StubWatchdog``) and, on a death, stops the
server and exits with ``STUB_DIED_EXIT`` (3), so that whatever runs it (`make serve`'s caller, systemd, the
kubelet: deploy/k8s runs the server under this module) starts it again. ``tools/serve.py`` uses it too.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from typing import Optional, Sequence

from .server import StubWatchdog

STUB_DIED_EXIT = 3
KILL_AFTER_S = 20  # a server with a dead stub cannot unload that model: its clean stop would hang


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def supervise(command: Sequence[str], env: Optional[dict] = None, http_port: int = 8000, watch: bool = True) -> int:
    """Run ``command`` until it exits; its exit code, or ``STUB_DIED_EXIT`` after a stub died."""
    # a session of its own, so that a hung shutdown can be ended with its stubs; signals reach it through us
    server = subprocess.Popen(list(command), env=env, start_new_session=True)
    outcome = {"code": None}

    def stub_died(instance: str, pid: int) -> None:
        print(f"supervise: FATAL: the Python backend stub of model instance {instance} (pid {pid}) died. Triton does "
              "not restart it and keeps reporting the model READY while that instance's requests fail; stopping the "
              f"server (exit {STUB_DIED_EXIT}) so that it is started again.", file=sys.stderr, flush=True)
        outcome["code"] = STUB_DIED_EXIT
        server.send_signal(signal.SIGTERM)
        threading.Timer(KILL_AFTER_S, lambda: server.poll() is None and os.killpg(server.pid, signal.SIGKILL)).start()

    watchdog = None
    if watch:
        model_url = f"http://127.0.0.1:{http_port}/v2/models/{{}}/ready"
        watchdog = StubWatchdog(server.pid, lambda model: http_ok(model_url.format(model)), stub_died)
        watchdog.start()

    def forward(received, _frame):
        if watchdog:
            watchdog.stop()  # stubs exit during a shutdown: not a death
        server.send_signal(received)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, forward)
    try:
        code = server.wait()
    finally:
        if watchdog:
            watchdog.stop()
    return outcome["code"] or code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8000, help="the server's HTTP port (model readiness checks)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver and its flags")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server command after --")
    return supervise(command, os.environ.copy(), args.http_port)


if __name__ == "__main__":
    raise SystemExit(main())

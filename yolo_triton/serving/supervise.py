"""Run tritonserver as a child and stop it loudly when a Python backend stub dies.

    python3 -m yolo_triton.serving.supervise --http-port 8000 -- tritonserver --model-repository=/models ...

Triton 2.51 neither restarts a Python backend stub that dies nor marks its model unready (measured:
tests/server/test_resilience.py): the model stays READY while the requests routed to that instance fail. The supervisor
passes SIGINT/SIGTERM on to the server (SIGHUP as SIGTERM; the server also gets SIGTERM if the supervisor itself is
killed), watches its stubs (``StubWatchdog``) and, on a death, stops the
server and exits with ``STUB_DIED_EXIT`` (3), so that whatever runs it (`make serve`'s caller, systemd, the
kubelet: deploy/k8s runs the server under this module) starts it again. `make serve` (``yolo_triton.serving.serve``) uses it too.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Optional, Sequence

from .processes import children, stub_instance, stub_region


STUB_DIED_EXIT = 3
KILL_AFTER_S = 20  # a server with a dead stub cannot unload that model: its clean stop would hang


def python_stubs(server_pid: int) -> dict:
    """The Python backend stub processes of one tritonserver (its children only, never another server's): pid →
    (model instance name, e.g. ``yolov7_small_preprocess_0_0``, an argument of the stub's command line; the stub's
    shared-memory region name). Keyed by pid: while a model reloads, an old and a new stub share an instance name.
    A dead stub not yet reaped (a zombie) has no command line: not listed."""
    return {pid: (stub_instance(argv), stub_region(argv)) for pid, argv in children(server_pid).items()
            if stub_instance(argv)}


INSTANCE_NAME = re.compile(r"^(?P<model>.+)_(?P<group>\d+)_(?P<index>\d+)$")  # Triton's <model>_<group>_<index>


class StubWatchdog(threading.Thread):
    """Calls ``on_death(instance, pid)`` when a Python backend stub is gone while its model is still READY with as
    many instances as before.

    Triton 2.51 neither restarts a stub that dies (OOM killer, a crash in native code) nor marks its model
    unready: requests routed to that instance fail with "Stub process … is not healthy" for as long as the server
    runs, while health checks pass (measured in tests/server/test_resilience.py). Counted per model, not by
    instance name: a reload that changes only the instance count updates the model in place, and the instance
    Triton keeps may be ``…_0_1`` while the new config names ``…_0_0`` (measured: it keeps either). So a death is
    a model with fewer live stubs than ``served_count(model)`` — the instances Triton serves for it, 0 where it is
    not ready (unloaded, or the server shutting down) — at two polls in a row (``interval`` apart). A reload with
    fewer instances lowers that count first; a full reload starts the new stubs before the old ones go. The
    short-lived stubs the backend runs while loading (named after the model, not an instance) are not counted.
    ``served_count`` answers None where the server does not answer (busy host, HTTP off): no evidence either way,
    asked again at the next poll. ``regions``: the shared-memory regions of the stubs seen, for the caller to
    remove after a server that had to be killed."""

    def __init__(self, server_pid: int, served_count, on_death, interval: float = 1.0):
        super().__init__(name="stub-watchdog", daemon=True)
        self.server_pid, self.served_count, self.on_death = server_pid, served_count, on_death
        self.interval = interval
        self._stop_event = threading.Event()
        self.regions: set = set()

    def run(self) -> None:
        seen: dict = {}  # model → {pid: instance name}: its stubs at the last poll that accounted for all of them
        short: dict = {}  # model → polls in a row at which it had fewer live stubs than served instances
        while not self._stop_event.wait(self.interval):
            live: dict = {}  # model → {pid: instance name}
            for pid, (name, region) in python_stubs(self.server_pid).items():
                instance = INSTANCE_NAME.match(name)
                if instance:
                    live.setdefault(instance["model"], {})[pid] = name
                if region:
                    self.regions.add(region)
            for model in set(seen) | set(live):
                stubs = live.get(model, {})
                gone = [pid for pid in seen.get(model, {}) if pid not in stubs]
                served = self.served_count(model) if gone else 0
                if served is None:
                    continue  # no answer: ask again at the next poll
                if len(stubs) >= served:  # none gone, or gone with their instances (reload, unload, shutdown)
                    seen[model] = stubs
                    short.pop(model, None)
                    continue
                short[model] = short.get(model, 0) + 1
                if short[model] >= 2 and not self._stop_event.is_set():
                    self.on_death(seen[model][gone[0]], gone[0])
                    return

    def stop(self) -> None:
        self._stop_event.set()


def served_count(base_url: str, model: str) -> Optional[int]:
    """How many instances Triton serves for ``model`` (from its config's instance groups, a GPU group once per
    GPU); 0 where it answers that the model is not ready or unknown; None where it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/v2/models/{model}/ready", timeout=5):
            pass
        with urllib.request.urlopen(f"{base_url}/v2/models/{model}/config", timeout=5) as response:
            groups = json.load(response).get("instance_group", [])
    except urllib.error.HTTPError as error:  # 400/404/503: answered, not ready or not known; 401/403: no evidence
        return None if error.code in (401, 403) else 0
    except (OSError, ValueError):
        return None
    return sum(int(group.get("count", 1)) * max(1, len(group.get("gpus", []))) for group in groups)


try:  # looked up here, not in the forked child (no imports or locks there)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL (Linux), so no server is left orphaned."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def remove_regions(regions) -> None:
    """Unlink the Python backend's shared-memory regions of a server that was killed (it could not remove them);
    left behind they fill /dev/shm — in a pod, a memory-backed emptyDir that survives container restarts."""
    for region in regions:
        path = os.path.join("/dev/shm", os.path.basename(region))
        if os.path.exists(path):
            os.unlink(path)


def supervise(command: Sequence[str], env: Optional[dict] = None, http_port: int = 8000, watch: bool = True) -> int:
    """Run ``command`` until it exits; its exit code, or ``STUB_DIED_EXIT`` after a stub died."""
    # handlers first: a signal that arrives while the server starts is passed on once it exists
    received: list = []
    server: Optional[subprocess.Popen] = None
    watchdog: Optional[StubWatchdog] = None

    def forward(number, _frame):
        if watchdog:
            watchdog.stop()  # stubs exit during a shutdown: not a death
        received.append(number)
        if server is not None:
            server.send_signal(signal.SIGTERM if number == signal.SIGHUP else number)

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, forward)
    # a session of its own, so that a hung shutdown can be ended with its stubs; signals reach it through us, and
    # it gets SIGTERM if we die; the admin key stays out of the stubs' environment (Triton has it as a flag)
    env = {k: v for k, v in (env or os.environ).items() if k != "TRITON_ADMIN_KEY"}
    server = subprocess.Popen(list(command), env=env, start_new_session=True, preexec_fn=_die_with_parent)
    if received:
        server.send_signal(signal.SIGTERM if received[0] == signal.SIGHUP else received[0])
    outcome = {"code": None}

    def stub_died(instance: str, pid: int) -> None:
        print(f"supervise: FATAL: the Python backend stub of model instance {instance} (pid {pid}) died. Triton does "
              "not restart it and keeps reporting the model READY while that instance's requests fail; stopping the "
              f"server (exit {STUB_DIED_EXIT}) so that it is started again.", file=sys.stderr, flush=True)
        outcome["code"] = STUB_DIED_EXIT
        server.send_signal(signal.SIGTERM)
        threading.Timer(KILL_AFTER_S, lambda: server.poll() is None and os.killpg(server.pid, signal.SIGKILL)).start()

    if watch and not received:
        base_url = f"http://127.0.0.1:{http_port}"
        watchdog = StubWatchdog(server.pid, lambda model: served_count(base_url, model), stub_died)
        watchdog.start()
    try:
        code = server.wait()
    finally:
        if watchdog:
            watchdog.stop()
            if outcome["code"] == STUB_DIED_EXIT:
                remove_regions(watchdog.regions)
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

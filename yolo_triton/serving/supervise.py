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
    """The Python backend stub processes of one tritonserver (its children only, never another server's):
    model instance name (e.g. ``yolov7_small_preprocess_0_0``, an argument of the stub's command line) → (pid,
    the stub's shared-memory region name). A dead stub not yet reaped (a zombie) has no command line: not listed."""
    return {stub_instance(argv): (pid, stub_region(argv)) for pid, argv in children(server_pid).items()
            if stub_instance(argv)}


INSTANCE_NAME = re.compile(r"^(?P<model>.+)_(?P<group>\d+)_(?P<index>\d+)$")  # Triton's <model>_<group>_<index>


class StubWatchdog(threading.Thread):
    """Calls ``on_death(instance, pid)`` when the Python backend stub of a model instance is gone while its model
    is still READY.

    Triton 2.51 neither restarts a stub that dies (OOM killer, a crash in native code) nor marks its model
    unready: requests routed to that instance fail with "Stub process … is not healthy" for as long as the server
    runs, while health checks pass (measured in tests/server/test_resilience.py). Not deaths: a model reloaded (its
    instances come back under the same names, new pids), reloaded with fewer instances, unloaded or the server
    shutting down (the instance is not among those Triton serves then), and the short-lived stubs the backend runs
    while loading (named after the model, not an instance). A stub must be missing at two polls in a row
    (``interval`` apart). ``served_instances(model)`` answers the instance names Triton serves for the model (none
    where it is not ready) or None (no answer: busy host, HTTP off) — None is no evidence either way, so the stub
    stays watched. ``regions``: the shared-memory regions of the stubs seen, for the caller to remove after a server
    that had to be killed."""

    def __init__(self, server_pid: int, served_instances, on_death, interval: float = 1.0):
        super().__init__(name="stub-watchdog", daemon=True)
        self.server_pid, self.served_instances, self.on_death = server_pid, served_instances, on_death
        self.interval = interval
        self._stop_event = threading.Event()
        self.regions: set = set()

    def run(self) -> None:
        seen: dict = {}  # instance → pid of its stub
        missing: dict = {}  # instance → polls at which it was missing
        while not self._stop_event.wait(self.interval):
            stubs = python_stubs(self.server_pid)
            self.regions.update(region for _, region in stubs.values() if region)
            current = {name: pid for name, (pid, _) in stubs.items() if INSTANCE_NAME.match(name)}
            seen.update(current)
            for name in [n for n in seen if n not in current]:
                served = self.served_instances(INSTANCE_NAME.match(name)["model"])
                if served is None:
                    continue  # no answer: ask again at the next poll
                if name not in served:  # unloaded, reloading, reloaded with fewer instances, or shutting down
                    seen.pop(name), missing.pop(name, None)
                    continue
                missing[name] = missing.get(name, 0) + 1
                if missing[name] >= 2 and not self._stop_event.is_set():
                    self.on_death(name, seen[name])
                    return
            for name in current:
                missing.pop(name, None)

    def stop(self) -> None:
        self._stop_event.set()


def served_instances(base_url: str, model: str) -> Optional[set]:
    """The instances Triton serves for ``model`` (``<model>_<group>_<index>``, from its config's instance groups);
    an empty set where it answers that the model is not ready or unknown; None where it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/v2/models/{model}/ready", timeout=5):
            pass
        with urllib.request.urlopen(f"{base_url}/v2/models/{model}/config", timeout=5) as response:
            groups = json.load(response).get("instance_group", [])
    except urllib.error.HTTPError as error:  # 400/404/503: answered, not ready or not known; 401/403: no evidence
        return None if error.code in (401, 403) else set()
    except (OSError, ValueError):
        return None
    return {f"{model}_{g}_{i}" for g, group in enumerate(groups) for i in range(int(group.get("count", 1)))}


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
        watchdog = StubWatchdog(server.pid, lambda model: served_instances(base_url, model), stub_died)
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

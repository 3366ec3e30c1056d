"""A tritonserver's processes, read from /proc: its children (the Python backend stubs), the model instance each
stub serves, and the memory of the whole tree. Used by the supervisor (a dead stub), the soak tool (memory growth)
and the tests."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

STUB_BINARY = "triton_python_backend_stub"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read(pid, name: str) -> str:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read().decode(errors="replace")


def parent_pid(pid) -> int:
    stat = _read(pid, "stat")
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state": ppid


def cmdline(pid) -> List[str]:
    """The command line; empty for a zombie (a dead process not yet reaped)."""
    return [a for a in _read(pid, "cmdline").split("\0") if a]


def children(pid: int) -> Dict[int, List[str]]:
    """The direct children of ``pid``: pid → command line. Processes gone meanwhile are left out."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_pid(entry) == pid:
                    found[int(entry)] = cmdline(entry)
            except (OSError, IndexError, ValueError):
                continue
    return found


def process_tree(pid: int) -> List[int]:
    """``pid`` and all its descendants."""
    by_parent: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                by_parent.setdefault(parent_pid(entry), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += by_parent.get(current, [])
    return tree


def stub_instance(argv: List[str]) -> Optional[str]:
    """The model instance (``yolov7_preprocess_0_1``) a Python backend stub serves, from its command line (…
    <instance name> <runtime>); None for any other process."""
    if not argv or not argv[0].endswith(STUB_BINARY) or len(argv) < 5:
        return None
    return argv[-2]


def stub_region(argv: List[str]) -> Optional[str]:
    """The stub's shared-memory region name (removed by the supervisor after a server it had to kill)."""
    return next((a for a in argv if a.startswith("triton_python_backend_shm_region")), None)


def memory_of(pid: int) -> Tuple[int, int, Dict[str, float]]:
    """(RSS bytes, PSS bytes, {process name: RSS MiB}) of ``pid`` and its descendants, a stub named by its model
    instance; processes gone meanwhile are skipped."""
    rss = pss = 0
    each: Dict[str, float] = {}
    for member in process_tree(pid):
        try:
            member_rss = int(_read(member, "statm").split()[1]) * PAGE
            member_pss = next(int(line.split()[1]) * 1024 for line in _read(member, "smaps_rollup").splitlines()
                              if line.startswith("Pss:"))
            argv = cmdline(member)
        except (OSError, ValueError, IndexError, StopIteration):
            continue
        name = stub_instance(argv) or (Path(argv[0]).name if argv else str(member))
        rss, pss = rss + member_rss, pss + member_pss
        each[name if name not in each else f"{name}#{member}"] = round(member_rss / 2**20, 2)
    return rss, pss, each


def tritonservers(grpc_port: int) -> List[int]:
    """The local tritonserver processes serving gRPC on ``grpc_port`` (``--grpc-port``, default 8001)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = cmdline(entry)
        except OSError:
            continue
        if not argv or Path(argv[0]).name != "tritonserver":
            continue
        ports = [a.split("=", 1)[1] for a in argv if a.startswith("--grpc-port=")]
        if int(ports[-1] if ports else 8001) == grpc_port:
            found.append(int(entry))
    return found

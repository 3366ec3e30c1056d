"""CUDA Multi-Process Service for our own server (`make serve MPS=1`).

Every Python-backend instance is its own process with its own CUDA context, and without MPS the GPU runs one
context at a time: the preprocess, detector and postprocess take turns instead of overlapping. Under MPS their
kernels share the GPU at once (measured on an H200: the ensemble 532 → 783 img/s with one instance per step, 855
with two; README, GPU path). The daemon started here is private to this server: its pipe and log folders are
fresh temporary folders, passed to tritonserver (and so to its stubs) through the environment, so CUDA programs
outside this server never connect to it. Stopped when the server stops."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

CONTROL = "nvidia-cuda-mps-control"
# where the NVIDIA driver's container hooks put the binaries when they are not on PATH
DRIVER_BINARIES = ("/usr/local/nvidia/bin", "/usr/bin")


class MPSUnavailable(RuntimeError):
    pass


def find_control() -> str:
    found = shutil.which(CONTROL) or next(
        (str(Path(d) / CONTROL) for d in DRIVER_BINARIES if os.access(Path(d) / CONTROL, os.X_OK)), None)
    if not found:
        raise MPSUnavailable(f"MPS was asked for but {CONTROL} is not on PATH nor in {', '.join(DRIVER_BINARIES)}: "
                             "it comes with the NVIDIA driver (a GPU host); serve without MPS=1 otherwise")
    return found


class MPSDaemon:
    """``with MPSDaemon() as mps: run(..., env={**env, **mps.env()})``."""

    def __init__(self, control: Optional[str] = None):
        self.control = control or find_control()
        self.folder: Optional[Path] = None

    def env(self) -> dict:
        assert self.folder is not None, "start() first"
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(self.folder / "log")}

    def start(self) -> "MPSDaemon":
        # a short path under /tmp: the pipe folder holds unix sockets, whose paths are limited to ~100 bytes
        self.folder = Path(tempfile.mkdtemp(prefix="yolo-mps-"))
        for sub in ("pipe", "log"):
            (self.folder / sub).mkdir()
        done = subprocess.run([self.control, "-d"], env={**os.environ, **self.env()}, capture_output=True, text=True)
        if done.returncode != 0:
            raise MPSUnavailable(f"{self.control} -d failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return self

    def stop(self) -> None:
        if self.folder is None:
            return
        subprocess.run([self.control], input="quit\n", env={**os.environ, **self.env()}, capture_output=True, text=True,
                       timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __enter__(self) -> "MPSDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

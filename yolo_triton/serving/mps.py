"""CUDA Multi-Process Service for our own server (`make serve DEVICE=gpu`: ``--mps auto``, the GPU preset's).

Every Python-backend instance is its own process with its own CUDA context, and without MPS the GPU runs one
context at a time: the preprocess, detector and postprocess take turns instead of overlapping. Under MPS their
kernels share the GPU at once (what that gains, measured: docs/gpu.md). The daemon started here is private to this server: its pipe and log folders are
fresh temporary folders, passed to tritonserver (and so to its stubs) through the environment, so CUDA programs
outside this server never connect to it. Stopped when the server stops; a serve process killed with SIGKILL
leaves it idle (`echo quit | CUDA_MPS_PIPE_DIRECTORY=<printed folder> nvidia-cuda-mps-control` ends it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

CONTROL = "nvidia-cuda-mps-control"
# where the NVIDIA driver's container hooks put the binaries when they are not on PATH
DRIVER_BINARIES = ("/usr/local/nvidia/bin", "/usr/bin")
# the daemon sees every GPU: one started under CUDA_VISIBLE_DEVICES=1 would renumber that GPU 0 for its clients,
# and a server keeping CUDA_VISIBLE_DEVICES=1 would then find none (NVIDIA's MPS docs); secrets stay out of it
DAEMON_ENV_DROPPED = ("CUDA_VISIBLE_DEVICES", "TRITON_ADMIN_KEY")
# a CUDA client under the daemon: `-d` returns 0 even where MPS cannot serve (an exclusive-process GPU, a
# container that forbids it), which only the first client finds out. The driver API through ctypes, not torch:
# importing torch would add seconds to every server start for a check of a few CUDA calls.
CLIENT_CHECK = """
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as error:
    sys.exit(f"no CUDA driver: {error}")
def call(name, *args):
    code = getattr(cuda, name)(*args)
    if code:
        text = ctypes.c_char_p()
        cuda.cuGetErrorName(code, ctypes.byref(text))
        sys.exit(f"{name} failed: {text.value.decode() if text.value else code}")
device, context, memory = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
call("cuInit", 0)
call("cuDeviceGet", ctypes.byref(device), 0)
call("cuDevicePrimaryCtxRetain", ctypes.byref(context), device)
call("cuCtxSetCurrent", context)
call("cuMemAlloc_v2", ctypes.byref(memory), ctypes.c_size_t(4))
call("cuMemsetD32_v2", memory, ctypes.c_uint(1), ctypes.c_size_t(1))
call("cuCtxSynchronize")
"""


class MPSUnavailable(RuntimeError):
    pass


def find_control() -> str:
    found = shutil.which(CONTROL) or next(
        (str(Path(d) / CONTROL) for d in DRIVER_BINARIES if os.access(Path(d) / CONTROL, os.X_OK)), None)
    if not found:
        raise MPSUnavailable(f"MPS was asked for but {CONTROL} is not on PATH nor in {', '.join(DRIVER_BINARIES)}: "
                             "it comes with the NVIDIA driver (a GPU host); serve with --mps off (or auto) otherwise")
    return found


class MPSDaemon:
    """``with MPSDaemon() as mps: run(..., env={**env, **mps.env()})``."""

    def __init__(self, control: Optional[str] = None):
        self.control = control or find_control()
        self.folder: Optional[Path] = None

    def env(self) -> dict:
        assert self.folder is not None, "start() first"
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(self.folder / "log")}

    def _daemon_env(self) -> dict:
        return {**{k: v for k, v in os.environ.items() if k not in DAEMON_ENV_DROPPED}, **self.env()}

    def start(self, check_client: bool = True) -> "MPSDaemon":
        # a short path under /tmp (not $TMPDIR): the pipe folder holds unix sockets, whose paths are limited
        self.folder = Path(tempfile.mkdtemp(prefix="yolo-mps-", dir="/tmp"))
        try:
            for sub in ("pipe", "log"):
                (self.folder / sub).mkdir()
            # its own session: a Ctrl-C in serve's terminal reaches the server, which drains first, not the daemon
            try:
                done = subprocess.run([self.control, "-d"], env=self._daemon_env(), capture_output=True, text=True,
                                      start_new_session=True, timeout=60)
            except subprocess.TimeoutExpired:
                raise MPSUnavailable(f"{self.control} -d did not return in 60 s") from None
            if done.returncode != 0:
                raise MPSUnavailable(f"{self.control} -d failed ({done.returncode}): "
                                     f"{done.stderr.strip() or done.stdout.strip()}")
            if check_client:
                self.check_client()
        except BaseException:
            self.stop()
            raise
        return self

    def check_client(self) -> None:
        """One small CUDA program under the daemon, so that a daemon that cannot serve fails here, loudly, and not
        as every model of the server failing to load."""
        try:
            done = subprocess.run([sys.executable, "-c", CLIENT_CHECK], env={**os.environ, **self.env()},
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise MPSUnavailable("a CUDA program under the MPS daemon did not finish in 120 s") from None
        if done.returncode != 0:
            raise MPSUnavailable("a CUDA program under the MPS daemon failed: " + done.stderr.strip()[-600:])

    def stop(self) -> None:
        if self.folder is None:
            return
        try:
            subprocess.run([self.control], input="quit\n", env=self._daemon_env(), capture_output=True, text=True,
                           timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass  # the server's own exit status matters more than a daemon slow to quit
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> "MPSDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

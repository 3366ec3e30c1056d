"""Finding, starting and stopping a tritonserver: the embedded one from PyPI by default, or any other.

The embedded server is the one inside the ``nvidia-pytriton`` wheel (Triton 2.51 with the Python backend); we
use its server only, not pytriton's Python API. Its Python backend stub is built per CPython version and
embeds the system libpython; it imports from the environment of the ``python3`` first on PATH and ignores
PYTHONPATH, so the server must start with this virtualenv's ``bin/`` first on PATH.

Point at another server with ``TRITONSERVER=/path/to/tritonserver`` (and ``TRITON_BACKENDS``, default
``/opt/tritonserver/backends``, as in NGC containers; ``TRITON_LIBS``, a folder of libraries it needs).

Plugin libraries (e.g. the yolov4 ``liblayerplugin.so`` of a tensorrtx-style engine) are server-wide in Triton:
those a detector's config.pbtxt declares (parameter ``plugins``) and those given on the command line are
checked to exist before the server starts, then preloaded (``LD_PRELOAD``, as the seed deployments do) or
handed to the TensorRT backend (``--backend-config=tensorrt,plugins=…``).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence


class TritonNotFound(RuntimeError):
    pass


class PluginNotFound(FileNotFoundError):
    pass


PLUGIN_MODES = ("preload", "backend-config")


def declared_plugins(repository: Path) -> List[Path]:
    """Plugin libraries the models in ``repository`` declare (detector config parameter ``plugins``)."""
    from ..repository import PLUGIN_SEPARATOR, PLUGINS_PARAMETER, read_model_config

    found: List[Path] = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = read_model_config(config_path)
        if PLUGINS_PARAMETER in config.parameters:
            value = config.parameters[PLUGINS_PARAMETER].string_value
            found += [Path(p) for p in value.split(PLUGIN_SEPARATOR) if p]
    return found


def plugin_launch(plugins: Sequence[Path], mode: str = "preload", base_env: Optional[dict] = None):
    """(environment additions, extra tritonserver flags) that load ``plugins``; every file must exist."""
    if mode not in PLUGIN_MODES:
        raise ValueError(f"plugin mode {mode!r}; known: {', '.join(PLUGIN_MODES)}")
    paths = list(dict.fromkeys(Path(p).resolve() for p in plugins))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PluginNotFound(f"plugin library not found: {', '.join(missing)} (build it, or fix the model's plugins parameter)")
    if not paths:
        return {}, []
    joined = [str(p) for p in paths]
    if mode == "backend-config":
        return {}, [f"--backend-config=tensorrt,plugins={';'.join(joined)}"]
    preload = os.pathsep.join(filter(None, [*joined, (base_env if base_env is not None else os.environ).get("LD_PRELOAD")]))
    return {"LD_PRELOAD": preload}, []


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path
    lib_dir: Optional[Path] = None  # extra LD_LIBRARY_PATH entry (the wheel's bundled libraries)

    def env(self, base: Optional[dict] = None) -> dict:
        env = dict(os.environ if base is None else base)
        # the Python backend stub imports from the first python3 on PATH: make it this interpreter's environment
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.lib_dir:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.lib_dir), env.get("LD_LIBRARY_PATH")]))
        return env


def embedded_triton() -> TritonInstall:
    """The server shipped in the nvidia-pytriton wheel, with the backend stub for this interpreter in place."""
    try:
        import pytriton
    except ImportError:
        raise TritonNotFound("nvidia-pytriton is not installed: run `make venv` (or point TRITONSERVER at a tritonserver)") from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub_source = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub_source.exists():
        raise TritonNotFound(f"the embedded Triton has no Python backend stub for CPython {version} (3.8–3.13 ship)")
    if not stub.exists() or stub.read_bytes() != stub_source.read_bytes():
        shutil.copy2(stub_source, stub)
    return TritonInstall(root / "bin" / "tritonserver", root / "backends", libs)


def find_triton() -> TritonInstall:
    """``TRITONSERVER`` from the environment if set, else the embedded server."""
    binary = os.environ.get("TRITONSERVER")
    if binary:
        if not Path(binary).exists():
            raise TritonNotFound(f"TRITONSERVER={binary} does not exist")
        libs = os.environ.get("TRITON_LIBS")  # libraries the server needs beside the system's (a carried bundle)
        return TritonInstall(Path(binary), Path(os.environ.get("TRITON_BACKENDS", "/opt/tritonserver/backends")),
                             Path(libs) if libs else None)
    return embedded_triton()


def server_command(
    install: TritonInstall, repository: Path, http_port=8000, grpc_port=8001, metrics_port=8002, extra: Sequence[str] = ()
) -> List[str]:
    return [
        str(install.binary),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={install.backend_dir}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        # the build writes every config field: without this the Python backend starts one more stub per model at
        # load only to ask it for its config (an import of torch: ~5 s of a GPU server's start; 2.0 → 0.5 s for
        # the small CPU ensemble)
        "--disable-auto-complete-config",
        *extra,
    ]


def visible_gpu_count() -> int:
    """CUDA GPUs this process sees (0 without torch: a CPU-only install)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def cuda_pool_flags(mib: int, gpu_count: Optional[int] = None) -> List[str]:
    """Triton's CUDA memory pool (what GPU tensors between ensemble steps are handed through) on every visible
    GPU: the flag is per GPU, and a GPU without a pool makes the Python backend copy its tensors via the host."""
    if gpu_count is None:
        gpu_count = visible_gpu_count()
    return [f"--cuda-memory-pool-byte-size={gpu}:{mib * 1024 * 1024}" for gpu in range(gpu_count)]


def free_ports(count: int) -> List[int]:
    """Ports the OS reports free now (bound together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    """A tritonserver subprocess on given ports; ``with TritonServer(repo) as server:`` waits until ready."""

    def __init__(self, repository: Path, ports: Optional[Sequence[int]] = None, extra: Sequence[str] = (), log_path=None,
                 plugins: Sequence[Path] = (), plugin_mode: str = "preload"):
        self.install = find_triton()
        # plugins are checked here, so that a missing one fails before any process starts
        self.plugin_env, plugin_flags = plugin_launch([*declared_plugins(repository), *plugins], plugin_mode)
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3)
        self.command = server_command(self.install, repository, self.http_port, self.grpc_port, self.metrics_port,
                                      [*plugin_flags, *extra])
        self.log_path = Path(log_path) if log_path else None
        self.process: Optional[subprocess.Popen] = None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    def start(self, timeout: float = 300.0) -> "TritonServer":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        # a new session: a Ctrl-C in the test runner's terminal does not reach the server before we stop it
        self.process = subprocess.Popen(self.command, env={**self.install.env(), **self.plugin_env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if not self.is_alive():
            return
        self.process.send_signal(signal.SIGINT)  # Triton's clean shutdown, as Ctrl-C in `make serve`
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its Python backend stubs
            self.process.wait()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

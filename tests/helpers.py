"""Client helpers for the end-to-end tests: thin tritonclient calls, as a user's client would make them."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from yolo_triton import specs
from yolo_triton.server import free_ports

# most tests use a narrow YOLOv7 at a small input (fast on 2 CPU cores); one uses the full 640 model
SMALL = specs.YOLOV7.with_overrides(name="yolov7_small", input_size=(256, 320), width_multiple=0.25)
# the full model's config default differs from DetectionParams' built-in 0.25, so a test can tell that the
# server really applies the value in config.pbtxt
FULL = specs.YOLOV7.with_overrides(conf_threshold=0.3)
# YOLOv4 from the built-in darknet cfg: the full network at a smaller input, and yolov4-tiny as it ships
V4 = specs.YOLOV4.with_overrides(name="yolov4_small", input_size=(320, 320))
V4_TINY = specs.YOLOV4_TINY
# RUNTIME=torch (our PyTorch modules as the detector, here on the CPU) with the weights of SMALL and V4_TINY
TORCH_SPECS = (SMALL.with_overrides(name="yolov7_small_torch"), V4_TINY.with_overrides(name="yolov4_tiny_torch"))
# postprocess-only models, one per detector output layout, fed synthetic detector outputs by tests/test_layouts.py
LAYOUT_SPECS = {
    layout: specs.YOLOV7.with_overrides(name=f"layout_{layout}", layout=layout, input_size=(320, 320))
    for layout in specs.LAYOUTS
}

ROOT = Path(__file__).resolve().parent.parent


def load_build_script(name: str):
    """A stage script of build/ (a folder of scripts, not a package), imported by its path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "build" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def client_for(server, protocol):
    if protocol == "grpc":
        import tritonclient.grpc as module

        return module, module.InferenceServerClient(server.grpc_url)
    import tritonclient.http as module

    return module, module.InferenceServerClient(server.http_url, concurrency=16, network_timeout=300)


def infer_images(module, client, model, images, parameters=None, timeout=None):
    """One request holding ``images`` (list of bytes) → dict of output arrays."""
    tensor = module.InferInput(specs.ENSEMBLE_INPUT, [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image] for image in images], dtype=object))
    outputs = [module.InferRequestedOutput(name) for name in specs.ENSEMBLE_OUTPUTS]
    result = client.infer(model, [tensor], outputs=outputs, parameters=parameters)
    return {name: result.as_numpy(name) for name in specs.ENSEMBLE_OUTPUTS}



def start_serve(repository, log_path, *options, env=None, timeout=300):
    """``tools/serve.py`` as `make serve` runs it, on free ports, limited to the small ensemble → (process, ports).

    ``options``: more serve.py flags (before ``--``). Waits until the plain HTTP endpoint is ready."""
    http, grpc, metrics, https = free_ports(4)
    command = [sys.executable, str(ROOT / "tools" / "serve.py"), "--repository", str(repository),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--https-port", str(https), *options,
               "--", "--model-control-mode=explicit", f"--load-model={SMALL.ensemble_name}", "--log-verbose=0"]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve.py exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, {"http": http, "grpc": grpc, "metrics": metrics, "https": https}
        except OSError:
            time.sleep(0.5)
    stop_serve(process)
    raise TimeoutError(f"serve.py not ready after {timeout} s:\n{Path(log_path).read_text()[-3000:]}")


def stop_serve(process, timeout=60, number=signal.SIGINT):
    """SIGINT, as Ctrl-C (serve.py passes it on to tritonserver); if that hangs, serve.py and the server (a
    session of its own) are killed with their children."""
    if process.poll() is None:
        process.send_signal(number)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in [*child_pids(process.pid), process.pid]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()


def child_pids(pid: int) -> list:
    """The direct children of ``pid`` (from /proc)."""
    children = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
    return children

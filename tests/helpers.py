"""Client helpers for the end-to-end tests: thin tritonclient calls, as a user's client would make them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from yolo_triton import specs

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


def python_stubs(server_pid: int) -> dict:
    """The Python backend stub processes of one tritonserver (its children only, never another server's):
    model instance name (e.g. ``yolov7_small_preprocess_0_0``, an argument of the stub's command line) → (pid,
    the stub's shared-memory region name)."""
    stubs = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == server_pid and args and args[0].endswith("triton_python_backend_stub") and len(args) > 4:
            region = next((a for a in args if a.startswith("triton_python_backend_shm_region")), None)
            instance = [a for a in args if a][-2]  # ... <instance name> DEFAULT
            stubs[instance] = (int(proc.name), region)
    return stubs

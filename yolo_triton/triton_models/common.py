"""Helpers shared by the Python-backend models: config parameters, per-request error responses, logging, step
timings, and tensors moved between Triton and PyTorch without copies (DLPack; torch imported only by the steps
that use it)."""
from __future__ import annotations

import json
import os
import time
from typing import List

import triton_python_backend_utils as pb_utils


class TritonLog:
    """The models' log lines go to Triton's own log (``pb_utils.Logger``: the server's format, levels and file);
    Python's logging would drop INFO lines and print the rest without the server's prefix."""

    @staticmethod
    def info(message: str, *args) -> None:
        pb_utils.Logger.log_info(message % args if args else message)

    @staticmethod
    def warning(message: str, *args) -> None:
        pb_utils.Logger.log_warn(message % args if args else message)


logger = TritonLog()

STEP_TIMES_ENV = "YOLO_TRITON_STEP_TIMES"  # a folder: each Python step instance writes its per-execute phase times


class StepTimes:
    """Opt-in phase timings inside one Python-backend step (``YOLO_TRITON_STEP_TIMES=<folder>``).

    Triton's statistics see a Python step as one block ("compute infer" spans the whole round trip to the stub
    process); these rows say what part of it is our own ``execute`` and which phase of it. One CSV per instance
    (``<model>.<pid>.csv``): start time, images, then milliseconds per phase; ``tools/step_times.py`` sums them
    up. On a GPU (``device``) a last column ``gpu``: the milliseconds on the GPU's clock from the execute's start to
    ``gpu_done`` (CUDA events), the GPU's share of the step beside the host's phases. Off (the default) it costs one
    attribute test per execute."""

    def __init__(self, model_name: str, phases: List[str], device=None):
        folder = os.environ.get(STEP_TIMES_ENV)
        self.file, self.events = None, None
        if folder:
            os.makedirs(folder, exist_ok=True)
            # Line-buffered: the summary is read while the server still runs (a block buffer held back whole
            # steps' rows in the first GPU measurement); one small write per execute is noise next to it.
            self.file = open(os.path.join(folder, f"{model_name}.{os.getpid()}.csv"), "a", buffering=1)
            if device is not None and device.type == "cuda":
                import torch

                self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.file.write("start,images," + ",".join(phases) + (",gpu" if self.events else "") + "\n")
        self._marks: List[float] = []

    def begin(self) -> None:
        if self.file is not None:
            self._marks = [time.perf_counter()]
            if self.events:
                self.events[0].record()

    def gpu_done(self) -> None:
        """The step's GPU work is all issued (before the step waits for it)."""
        if self.events:
            self.events[1].record()

    def lap(self) -> None:
        """Close the current phase (in the order of ``phases``)."""
        if self.file is not None:
            self._marks.append(time.perf_counter())

    def end(self, images: int) -> None:
        if self.file is None:
            return
        marks = self._marks
        laps = ",".join(f"{(b - a) * 1e3:.3f}" for a, b in zip(marks, marks[1:]))
        if self.events:
            self.events[1].synchronize()
            laps += f",{self.events[0].elapsed_time(self.events[1]):.3f}"
        self.file.write(f"{marks[0]:.6f},{images},{laps}\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def request_slices(parts) -> List[slice]:
    """Where each request's part (anything with a length: its images) lies in the batch stacked from all of them."""
    slices, start = [], 0
    for part in parts:
        slices.append(slice(start, start + len(part)))
        start += len(part)
    return slices


def groups_by_shape(tensors) -> List[List[int]]:
    """The indices of ``tensors`` (one per request) grouped by their shape after the batch dimension, in first-seen
    order: each group can be stacked into one batch (shapes differ only with rectangular inference)."""
    groups = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape[1:]), []).append(index)
    return list(groups.values())


class ConfigParameters(dict):
    """``parameters { key: "k" value: { string_value: "v" } }`` of a config.pbtxt. No defaults here: the configs
    are generated with every parameter their step reads (yolo_triton/repository.py), so a missing one is an error."""

    def __init__(self, model_config: dict):
        super().__init__({key: value["string_value"] for key, value in model_config.get("parameters", {}).items()})
        self.model = model_config.get("name", "?")

    def __missing__(self, key: str):
        raise pb_utils.TritonModelException(f"the config of model {self.model} has no parameter {key!r}: write the "
                                            "repository with `make build-engines` (yolo_triton/repository.py)")


def config_parameters(model_config: dict) -> ConfigParameters:
    return ConfigParameters(model_config)


def parse_model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def error_response(message: str, code=None) -> "pb_utils.InferenceResponse":
    """A response that fails this one request only; the message reaches the client unchanged."""
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def output_dtype(model_config: dict, name: str):
    return pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(model_config, name)["data_type"])


def input_tensor(request, name: str):
    """A request's input as a torch tensor where Triton put it (GPU when the config allows GPU inputs)."""
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())


def output_tensor(name: str, tensor) -> "pb_utils.Tensor":
    from torch.utils.dlpack import to_dlpack

    return pb_utils.Tensor.from_dlpack(name, to_dlpack(tensor.contiguous()))


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; 0.0 elsewhere): at ``initialize``, what the stub's start and
    the model file's imports took, for a load line that says where a slow server start went."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
        with open("/proc/uptime") as uptime:
            return float(uptime.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def pick_device(args: dict):
    """The GPU Triton placed this model instance on (KIND_GPU, one instance per listed GPU), else the CPU.

    Made the current device too: CUDA graphs, nvJPEG and the default stream then all work on this GPU, not GPU 0."""
    import torch

    if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
        device = torch.device("cuda", int(args["model_instance_device_id"]))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")

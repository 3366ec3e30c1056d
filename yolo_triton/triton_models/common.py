"""Helpers shared by the Python-backend models: config parameters and per-request error responses."""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List

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
    up. Off (the default) it costs one attribute test per execute."""

    def __init__(self, model_name: str, phases: List[str]):
        folder = os.environ.get(STEP_TIMES_ENV)
        self.file = None
        if folder:
            os.makedirs(folder, exist_ok=True)
            # Line-buffered: the summary is read while the server still runs (a block buffer held back whole
            # steps' rows in the first GPU measurement); one small write per execute is noise next to it.
            self.file = open(os.path.join(folder, f"{model_name}.{os.getpid()}.csv"), "a", buffering=1)
            self.file.write("start,images," + ",".join(phases) + "\n")
        self._marks: List[float] = []

    def begin(self) -> None:
        if self.file is not None:
            self._marks = [time.perf_counter()]

    def lap(self) -> None:
        """Close the current phase (in the order of ``phases``)."""
        if self.file is not None:
            self._marks.append(time.perf_counter())

    def end(self, images: int) -> None:
        if self.file is None:
            return
        marks = self._marks
        laps = ",".join(f"{(b - a) * 1e3:.3f}" for a, b in zip(marks, marks[1:]))
        self.file.write(f"{marks[0]:.6f},{images},{laps}\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def config_parameters(model_config: dict) -> Dict[str, str]:
    """``parameters { key: "k" value: { string_value: "v" } }`` of config.pbtxt as a plain dict."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def parse_model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def error_response(message: str, code=None) -> "pb_utils.InferenceResponse":
    """A response that fails this one request only; the message reaches the client unchanged."""
    code = pb_utils.TritonError.INVALID_ARG if code is None else code
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def output_dtype(model_config: dict, name: str):
    return pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(model_config, name)["data_type"])

"""Helpers shared by the Python-backend models: config parameters and per-request error responses."""
from __future__ import annotations

import json
import logging
from typing import Dict

import triton_python_backend_utils as pb_utils

logger = logging.getLogger("yolo_triton")


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

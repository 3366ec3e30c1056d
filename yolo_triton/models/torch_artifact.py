"""The detector for RUNTIME=torch: our PyTorch modules and their fused weights in one file, no pickled classes.

``save_torch_artifact`` writes ``{"format", "spec" (the ModelSpec's fields), "cfg_text" (darknet cfg or None),
"state_dict" (fused)}`` with ``torch.save``; ``load_torch_artifact`` rebuilds the architecture from the spec (and
cfg text), fuses it and loads the weights with ``torch.load(weights_only=True)`` — the file holds tensors, strings
and numbers only, so loading it runs no code. The weights are the ones the ONNX export was made from
(``build/create_onnx.py --save-torch``), so onnxruntime, TensorRT and torch serve the same network.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import torch

from ..specs import ModelSpec

FORMAT = "yolo_triton.torch/2"  # /2: the spec names its architecture (no layer table, no family)


def save_torch_artifact(model: torch.nn.Module, spec: ModelSpec, path: Union[str, os.PathLike],
                        meta: Optional[dict] = None) -> None:
    """``model``: fused, eval mode; the yolov4 family's model carries ``cfg_text`` (set by ``darknet.from_spec``).
    ``meta``: strings to keep with it (as the ONNX metadata_props: random_weights, seed…)."""
    if not getattr(model, "is_fused", False):
        raise ValueError("save the fused model (call fuse() first): the artifact is loaded into a fused architecture")
    payload = {
        "format": FORMAT,
        "spec": {k: _plain(v) for k, v in dataclasses.asdict(spec).items()},
        "cfg_text": getattr(model, "cfg_text", None) if spec.family == "yolov4" else None,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": {str(k): str(v) for k, v in (meta or {}).items()},
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_torch_artifact(path: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None) -> tuple:
    """(fused model in eval mode on ``device``, its ModelSpec); the saved ``meta`` is ``model.artifact_meta``."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} artifact (write one with build/create_onnx.py --save-torch)")
    spec = ModelSpec(**{k: _tuples(v) for k, v in payload["spec"].items()})
    if spec.family == "yolov4":
        from . import darknet

        model = darknet.DarknetModel(darknet.parse_cfg(payload["cfg_text"]), height=spec.input_size[0],
                                     width=spec.input_size[1], name=spec.name)
    else:
        from .yolov7 import build_model

        model = build_model(spec)
    model.eval()
    model.fuse()
    model.load_state_dict(payload["state_dict"], strict=True)
    model.artifact_meta = dict(payload.get("meta", {}))
    if device is not None:
        model.to(device)
    return model, spec

"""Moving tensors between Triton's Python backend and PyTorch without copies (DLPack), on CPU or GPU."""
from __future__ import annotations

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack


def input_tensor(request, name: str) -> torch.Tensor:
    """A request's input as a torch tensor where Triton put it (GPU when the config allows GPU inputs)."""
    return from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())


def output_tensor(name: str, tensor: torch.Tensor) -> "pb_utils.Tensor":
    return pb_utils.Tensor.from_dlpack(name, to_dlpack(tensor.contiguous()))


def pick_device(config: dict) -> torch.device:
    """The GPU of this model instance (KIND_GPU), else the CPU."""
    if torch.cuda.is_available() and any(g.get("kind") == "KIND_GPU" for g in config.get("instance_group", [])):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

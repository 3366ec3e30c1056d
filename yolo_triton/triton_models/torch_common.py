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


def pick_device(args: dict) -> torch.device:
    """The GPU Triton placed this model instance on (KIND_GPU, one instance per listed GPU), else the CPU.

    Made the current device too: CUDA graphs, nvJPEG and the default stream then all work on this GPU, not GPU 0."""
    if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
        device = torch.device("cuda", int(args["model_instance_device_id"]))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")

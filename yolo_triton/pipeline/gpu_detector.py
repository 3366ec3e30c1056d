"""The detector on the GPU for RUNTIME=torch: our fused network in FP16, through torch.compile, in CUDA graphs.

Where the time goes and what each step gained, measured: docs/gpu.md.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch


def batch_buckets(max_batch: int) -> List[int]:
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class GraphRunner:
    """CUDA graphs of ``model`` per batch bucket (1, 2, 4, … up to ``max_batch``, or the ``buckets`` given) over
    static input/output buffers."""

    def __init__(self, model, input_chw, max_batch: int, device, dtype, buckets: Optional[Sequence[int]] = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.buckets = sorted(set(buckets)) if buckets else batch_buckets(max_batch)
        self.inputs: Dict[int, torch.Tensor] = {}
        self.outputs: Dict[int, torch.Tensor] = {}
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # no_grad, not inference_mode: the static buffers are refilled later, also outside inference mode
        with torch.cuda.stream(stream), torch.no_grad():
            for size in self.buckets:
                static = torch.rand((size, *input_chw), device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
                for _ in range(3):  # warm-up: cuDNN picks its kernels before the capture
                    model(static)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    out = model(static)
                self.inputs[size], self.outputs[size], self.graphs[size] = static, out, graph
        torch.cuda.current_stream(device).wait_stream(stream)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        results, start = [], 0
        while start < len(batch):
            chunk = batch[start : start + self.buckets[-1]]
            size = next(b for b in self.buckets if b >= len(chunk))
            self.inputs[size][: len(chunk)].copy_(chunk)  # rows past len(chunk) keep old data; their output is dropped
            self.graphs[size].replay()
            results.append(self.outputs[size][: len(chunk)].to(torch.float32, copy=True))  # the next replay reuses the buffer
            start += len(chunk)
        return results[0] if len(results) == 1 else torch.cat(results)


def compile_detector(model: torch.nn.Module, mode: str, variants: int) -> torch.nn.Module:
    """``model`` through ``torch.compile`` (Inductor), or as is for mode "off". Static shapes: one compile per batch
    bucket (``variants`` of them), each then captured in its CUDA graph by :class:`GraphRunner`.

    Inductor fuses the activations, additions and concatenations around cuDNN's convolutions into few kernels, for
    tens of seconds of compiling per bucket at load; what it gains, measured: docs/gpu.md."""
    if mode == "off":
        return model
    import os
    import shutil
    import sys

    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, variants + 1)
    if not os.path.basename(sys.executable or "").startswith("python"):
        # Inside Triton's Python backend the interpreter is embedded in the stub binary, which is what
        # sys.executable names; Inductor starts its compile workers with sys.executable: give it the interpreter
        # of the same environment (the stub imports from the first python3 on PATH), or compile in this process.
        python = shutil.which("python3")
        if python:
            sys.executable = python
        else:
            import torch._inductor.config

            torch._inductor.config.compile_threads = 1
    return torch.compile(model, mode=mode, dynamic=False)


def prepare_for_gpu(model: torch.nn.Module, device, dtype=torch.float16) -> torch.nn.Module:
    """A fused detector for GPU inference: FP16 weights, channels_last, cuDNN autotuning. In FP32, TF32 is off:
    FP32 means FP32 (TF32's 10-bit mantissa is FP16's precision)."""
    torch.backends.cudnn.benchmark = True
    if dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return model.to(device, dtype=dtype).to(memory_format=torch.channels_last).eval()

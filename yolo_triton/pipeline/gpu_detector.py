"""The detector on the GPU for RUNTIME=torch: our fused network in FP16, compiled (ahead of time by AOTInductor at
build time, else by torch.compile at load, from the build's compile cache where it made one), in CUDA graphs per
batch bucket.

Where the time goes and what each step gained, measured: docs/gpu.md.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..placement import batch_buckets


class GraphRunner:
    """CUDA graphs of ``model`` per input shape and batch bucket (1, 2, 4, … up to ``max_batch``, or the
    ``buckets`` given and ``max_batch``) over static input/output buffers. ``input_chw``: the input's C×H×W, or a list of them
    (rectangular inference: one set of graphs per shape bucket)."""

    def __init__(self, model, input_chw, max_batch: int, device, dtype, buckets: Optional[Sequence[int]] = None,
                 capture_error_mode: str = "global"):
        self.model, self.device, self.dtype = model, device, dtype
        self.shapes = [tuple(input_chw)] if isinstance(input_chw[0], int) else [tuple(s) for s in input_chw]
        self.buckets = sorted(set(buckets) | {max_batch}) if buckets else batch_buckets(max_batch)
        self.inputs: Dict[Tuple[tuple, int], torch.Tensor] = {}
        self.outputs: Dict[Tuple[tuple, int], torch.Tensor] = {}
        self.graphs: Dict[Tuple[tuple, int], torch.cuda.CUDAGraph] = {}
        # where the set-up's time went: the warm-up runs (a compiled model's compiling included) and the captures;
        # the warm-up runs also per graph
        self.seconds = {"runs": 0.0, "captures": 0.0}
        self.run_seconds: Dict[Tuple[tuple, int], float] = {}
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # no_grad, not inference_mode: the static buffers are refilled later, also outside inference mode
        with torch.cuda.stream(stream), torch.no_grad():
            for shape in self.shapes:
                for size in self.buckets:
                    static = torch.rand((size, *shape), device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
                    started = time.perf_counter()
                    for _ in range(3):  # warm-up: cuDNN picks its kernels before the capture
                        model(static)
                    torch.cuda.synchronize(device)
                    captured = time.perf_counter()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=stream, capture_error_mode=capture_error_mode):
                        out = model(static)
                    self.seconds["runs"] += captured - started
                    self.run_seconds[(shape, size)] = captured - started
                    self.seconds["captures"] += time.perf_counter() - captured
                    key = (shape, size)
                    self.inputs[key], self.outputs[key], self.graphs[key] = static, out, graph
        torch.cuda.current_stream(device).wait_stream(stream)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        shape = tuple(batch.shape[1:])
        if shape not in self.shapes:
            raise ValueError(f"no CUDA graph for input {'×'.join(map(str, shape))}; captured: "
                             f"{', '.join('×'.join(map(str, s)) for s in self.shapes)}")
        results, start = [], 0
        while start < len(batch):
            chunk = batch[start : start + self.buckets[-1]]
            key = (shape, next(b for b in self.buckets if b >= len(chunk)))
            self.inputs[key][: len(chunk)].copy_(chunk)  # rows past len(chunk) keep old data; their output is dropped
            self.graphs[key].replay()
            results.append(self.outputs[key][: len(chunk)].to(torch.float32, copy=True))  # the next replay reuses the buffer
            start += len(chunk)
        return results[0] if len(results) == 1 else torch.cat(results)


def graph_buckets(preferred: Sequence[int], max_batch: int) -> List[int]:
    """The batch sizes to capture a CUDA graph for: those the batcher prefers (the config's preferred batch sizes),
    so that its batches run unpadded, and ``max_batch``; ``batch_buckets`` where it prefers none (Triton fills an
    empty list with ``max_batch`` alone, which would pad every batch to it)."""
    sizes = sorted({b for b in preferred if 0 < b <= max_batch} | {max_batch})
    return sizes if len(sizes) > 1 else batch_buckets(max_batch)


def compile_detector(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` through ``torch.compile`` (Inductor), or as is for mode "off". The batch is dynamic, the image size
    static: Inductor compiles two graphs, batch 1 and every batch from 2 up (Dynamo specialises sizes 0 and 1), and
    :class:`GraphRunner` captures each batch bucket's CUDA graph from them. One graph per bucket instead cost the
    server minutes at load (a compile per bucket); what compiling gains, measured: docs/gpu.md."""
    if mode == "off":
        return model
    import os
    import shutil
    import sys

    import torch._dynamo

    # batch 1, then the dynamic batch (and a spare): the dynamic graph is compiled at the second batch size seen
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 3)
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
    # dynamic=None: static until a size changes, then that dimension dynamic (Dynamo's automatic dynamic shapes);
    # only the batch ever changes here, so the image size stays static and its kernels specialised
    return torch.compile(model, mode=mode, dynamic=None)


def prepare_for_gpu(model: torch.nn.Module, device, dtype=torch.float16) -> torch.nn.Module:
    """A fused detector for GPU inference: FP16 weights, channels_last. In FP32, TF32 is off: FP32 means FP32 (TF32's
    10-bit mantissa is FP16's precision). cuDNN's autotuning (benchmark mode) stays off: for the compiled detector
    it cost ~1.5 s per batch bucket at load, and it gained nothing per batch (measured: docs/gpu.md)."""
    if dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return model.to(device, dtype=dtype).to(memory_format=torch.channels_last).eval()


AOT_META_SUFFIX = ".json"  # beside the package: what it was built with


def device_identity(device) -> dict:
    """What an ahead-of-time package is tied to: the torch that compiled it and the GPU it was compiled for."""
    return {"torch": torch.__version__, "device": torch.cuda.get_device_name(device),
            "capability": list(torch.cuda.get_device_capability(device))}


class DirectRunner:
    """A compiled detector called as it is, batch of any size (an ahead-of-time package that CUDA graphs cannot
    capture); the same call as a :class:`GraphRunner`."""

    def __init__(self, model, max_batch: int, device, dtype):
        self.model, self.device, self.dtype, self.buckets = model, device, dtype, [max_batch]

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.contiguous(memory_format=torch.channels_last)
        return torch.cat([self.model(batch[i : i + self.buckets[0]]).float() for i in range(0, len(batch), self.buckets[0])])


def capturable(model, input_chw, device, dtype) -> bool:
    """Whether CUDA graphs capture ``model`` and replay it to its own result (an AOTInductor package's runtime may
    query events, which a capture forbids). Tried where a failure harms nothing: the build's own process."""
    try:
        runner = GraphRunner(model, input_chw, 2, device, dtype, buckets=[2], capture_error_mode="relaxed")
        x = torch.rand((2, *input_chw), device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return bool(torch.allclose(runner(x), model(x).float(), rtol=1e-3, atol=1e-3))
    except Exception:
        return False


def publish(tmp, path, identity: dict) -> None:
    """``tmp`` (a built package or cache) renamed to ``path``, with ``identity`` (what it was built with) written
    beside it first: a reader never finds the file without its identity, and a failed build leaves neither."""
    import json
    from pathlib import Path

    path = Path(path)
    path.with_name(path.name + AOT_META_SUFFIX).write_text(json.dumps(identity, indent=1) + "\n")
    Path(tmp).replace(path)


def identity_beside(path) -> Optional[dict]:
    """What ``path`` was built with (``publish``'s), or None where the file or its identity is missing."""
    import json
    from pathlib import Path

    path = Path(path)
    meta_path = path.with_name(path.name + AOT_META_SUFFIX)
    return json.loads(meta_path.read_text()) if path.exists() and meta_path.exists() else None


def first_line(error: Exception) -> str:
    """An exception's first line, or its type where it has no message (what a log line says of it)."""
    return str(error).splitlines()[0] if str(error).strip() else type(error).__name__


def compile_ahead(model: torch.nn.Module, input_chw, max_batch: int, device, dtype, mode: str, path) -> None:
    """The prepared detector (``prepare_for_gpu``) exported with a dynamic batch of 1 to ``max_batch`` and compiled
    by AOTInductor into the package ``path`` (kernels and weights), with ``device_identity`` beside it and whether
    CUDA graphs capture it. Written to a temporary name and renamed: a failed build leaves no package."""
    from pathlib import Path

    path = Path(path)
    example = torch.rand((min(2, max_batch), *input_chw), device=device, dtype=dtype)
    example = example.contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    options = {"max_autotune": True} if mode == "max-autotune-no-cudagraphs" else {}
    tmp = path.with_name(f".tmp.{path.name}")  # AOTInductor wants a name ending in .pt2
    torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs=options)
    graphs = capturable(torch._inductor.aoti_load_package(str(tmp)), input_chw, device, dtype)
    publish(tmp, path, {**compile_identity(device, dtype, input_chw, max_batch, mode), "cuda_graphs": graphs})


def compile_identity(device, dtype, input_chw, max_batch: int, mode: str) -> dict:
    """What a compile cache is tied to: ``device_identity`` and what was compiled (mode, dtype, input, batches)."""
    return {**device_identity(device), "mode": mode, "dtype": str(dtype).replace("torch.", ""),
            "input": list(input_chw), "max_batch": max_batch, "batch": "dynamic"}


def save_compile_cache(path, identity: dict) -> int:
    """What ``torch.compile`` compiled in this process, as torch.compiler's portable cache ("mega-cache": Inductor's
    FX graphs and Triton kernels, AOTAutograd's graphs, autotuning results), written to ``path`` with ``identity``
    beside it (``.json``). Written to a temporary name and renamed. → its size in bytes."""
    from pathlib import Path

    saved = torch.compiler.save_cache_artifacts()
    if not saved or not saved[0]:
        raise ValueError("nothing was compiled in this process: no compile cache to save")
    path = Path(path)
    tmp = path.with_name(f".tmp.{path.name}")
    tmp.write_bytes(saved[0])
    publish(tmp, path, identity)
    return len(saved[0])


def load_compile_cache(path, identity: dict) -> str:
    """Seed this process's compile caches from ``path`` (``save_compile_cache``'s) where it was saved for
    ``identity``, so that ``torch.compile`` finds its graphs and kernels compiled; → "" where it did, else why not."""
    from pathlib import Path

    path = Path(path)
    saved = identity_beside(path)
    if saved is None:
        return f"no compile cache {path.name}"
    for key in identity:
        if saved.get(key) != identity[key]:
            return f"the compile cache {path.name} was made for {key} {saved.get(key)}, this is {identity[key]}"
    try:  # None: torch could not read it (it logs why) — another build of torch wrote it, or it is damaged
        loaded = torch.compiler.load_cache_artifacts(path.read_bytes())
        why = "" if loaded is not None else "torch.compiler could not read it"
    except Exception as error:
        why = first_line(error)
    return f"the compile cache {path.name} does not load: {why}" if why else ""


def compile_seconds() -> Dict[str, float]:
    """Where this process's ``torch.compile`` time went, from torch's own timers (``torch._dynamo.utils``): "total"
    (Dynamo's compile calls), "tracing" (Dynamo reading the Python bytecode and building guards) and "inductor"
    (Inductor compiling, or loading what its caches hold). {} where this torch keeps no such timers (or nothing was
    compiled)."""
    try:
        from torch._dynamo.utils import compile_times

        names, values = compile_times(repr="csv", aggregate=True)
    except Exception:  # a private API: its absence costs a log line's detail, nothing else
        return {}
    timed = dict(zip(names, map(float, values)))
    if "_compile.compile_inner" not in timed:  # timers renamed or nothing compiled: no breakdown rather than zeros
        return {}
    return {"total": timed["_compile.compile_inner"],
            "tracing": timed.get("bytecode_tracing", 0.0) + timed.get("build_guards", 0.0),
            "inductor": timed.get("OutputGraph.call_user_compiler", 0.0)}


def load_split(took: float, reading: float, compiling: Dict[str, float], setup: Dict[str, float]) -> str:
    """Where a compiled detector's load went, for its log line: ``took`` seconds in all, ``reading`` the compile
    cache, ``compiling`` (``compile_seconds``: Dynamo's total, its tracing, Inductor), the :class:`GraphRunner`'s
    ``setup`` (its warm-up runs, which compile on their first calls, and its captures). Which part to shorten:
    tracing is redone at every load, Inductor's part is what the compile cache shortens, the runs besides compiling
    are the compiled graphs' first calls. "" where torch kept no compile timers."""
    if not compiling:
        return ""
    runs = setup["runs"] - compiling["total"]
    rest = took - reading - setup["runs"] - setup["captures"]
    return (f": reading the cache {reading:.1f} s, compiling {compiling['total']:.1f} s (Dynamo tracing "
            f"{compiling['tracing']:.1f} s, Inductor {compiling['inductor']:.1f} s), the graphs' first runs besides "
            f"compiling {runs:.1f} s, CUDA graph captures {setup['captures']:.1f} s, the rest {rest:.1f} s")


def warm_compile_cache(model: torch.nn.Module, input_chw, max_batch: int, device, dtype, mode: str, path) -> int:
    """The prepared detector compiled and captured as the server does at load (``compile_detector`` then a
    :class:`GraphRunner` over every batch bucket), and what that compiled saved to ``path``
    (``save_compile_cache``): the build's stand-in for an ahead-of-time package where AOTInductor's fails, so that
    the server's compile at load finds it all compiled. → the cache's size in bytes."""
    GraphRunner(compile_detector(model, mode), input_chw, max_batch, device, dtype)
    return save_compile_cache(path, compile_identity(device, dtype, input_chw, max_batch, mode))


def load_ahead(path, device, dtype, input_chw, max_batch: int):
    """(the compiled package as a callable, "") where ``path`` was built for this torch, this GPU, this input and
    batch; else (None, why not)."""
    from pathlib import Path

    path = Path(path)
    meta = identity_beside(path)
    if meta is None:
        return None, f"no ahead-of-time package {path.name} (make build-engines DEVICE=gpu builds it on a GPU host)"
    here = {**device_identity(device), "dtype": str(dtype).replace("torch.", ""), "input": list(input_chw)}
    for key, label in (("torch", "torch"), ("capability", "compute capability"), ("dtype", "dtype"), ("input", "input")):
        if meta.get(key) != here[key]:
            return None, f"{path.name} was built for {label} {meta.get(key)}, this is {here[key]}: rebuild it"
    if meta.get("max_batch", 0) < max_batch:
        return None, f"{path.name} takes batches up to {meta.get('max_batch')}, the config up to {max_batch}: rebuild it"
    try:
        compiled = torch._inductor.aoti_load_package(str(path))
    except Exception as error:  # a package of another build of torch, a missing library: compile at load instead
        return None, f"{path.name} does not load: {first_line(error)}"
    compiled.cuda_graphs = bool(meta.get("cuda_graphs"))
    return compiled, ""


def detector_runner(model: torch.nn.Module, input_chw, max_batch: int, device, dtype, mode: str, aot_path, log,
                    cache_path=None, buckets: Optional[Sequence[int]] = None):
    """What the server runs for the prepared detector, and `make bench` (e) measures: CUDA graphs per batch bucket
    over the ahead-of-time package where it fits; else over ``torch.compile`` at load (mode ≠ "off"), from the
    build's compile cache ``cache_path`` where it fits (``warm_compile_cache``); else over the network as is. Each
    step down is said through ``log(message, True)``, the rest through ``log(message, False)``.
    → (GraphRunner, how it was compiled: "aot", the torch.compile mode, or "off").

    ``input_chw`` a list of shapes (rectangular inference): CUDA graphs of the network as is, per shape and batch
    bucket — compiling each of them would multiply the minutes of compiling by the number of shapes. ``buckets``:
    the batch sizes with a CUDA graph (default ``batch_buckets(max_batch)``; the served detector's are its config's
    preferred batch sizes)."""

    started = time.perf_counter()
    if mode != "off" and not isinstance(input_chw[0], int):
        log(f"rectangular inference ({len(input_chw)} input shapes): CUDA graphs of the uncompiled network, not "
            f"torch.compile {mode}", True)
        mode = "off"
    if mode != "off":
        compiled, why_not = load_ahead(aot_path, device, dtype, input_chw, max_batch) if aot_path else (None, "")
        if compiled is not None:
            try:
                if compiled.cuda_graphs:
                    runner = GraphRunner(compiled, input_chw, max_batch, device, dtype, buckets,
                                         capture_error_mode="relaxed")
                else:  # its runtime cannot be captured (the build tried): called as it is
                    runner = DirectRunner(compiled, max_batch, device, dtype)
                    runner(torch.rand((1, *input_chw), device=device, dtype=dtype))
                log(f"ahead-of-time package {'and CUDA graphs ' if compiled.cuda_graphs else '(no CUDA graphs) '}"
                    f"ready in {time.perf_counter() - started:.1f} s", False)
                return runner, "aot"
            except Exception as error:
                why_not = f"the ahead-of-time package failed its first runs: {first_line(error)}"
        cache_there = cache_path is not None and identity_beside(cache_path) is not None
        reading = time.perf_counter()
        why_no_cache = (load_compile_cache(cache_path, compile_identity(device, dtype, input_chw, max_batch, mode))
                        if cache_there else "no compile cache")
        reading = time.perf_counter() - reading
        how = "from the build's compile cache" if not why_no_cache else "which takes minutes"
        if why_not:
            log(f"{why_not}; compiling at load (torch.compile {mode}), {how}", True)
        if why_no_cache and cache_there:  # one there, but not for this torch, GPU or shape
            log(f"{why_no_cache}: compiling from scratch", True)
        try:
            runner = GraphRunner(compile_detector(model, mode), input_chw, max_batch, device, dtype, buckets)
            took = time.perf_counter() - started
            log(f"torch.compile ({mode}) and CUDA graphs ready in {took:.0f} s"
                f"{load_split(took, reading, compile_seconds(), runner.seconds)}"
                f"{'' if why_no_cache else ', ' + how}", False)
            return runner, mode
        except Exception as error:  # e.g. no C compiler for Inductor's kernels: serve uncompiled, slower, and say so
            # the last line says why (Inductor's first line is often just "backend='inductor' raised:")
            reason = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
            log(f"torch.compile ({mode}) failed, serving the uncompiled detector: {reason[-1]}", True)
            torch._dynamo.reset()
    return GraphRunner(model, input_chw, max_batch, device, dtype, buckets), "off"

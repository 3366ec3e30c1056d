"""Where the steps run and how: the two presets `make … DEVICE=cpu|gpu` chooses from, each default written here once.

A ``Placement`` decides the detector's runtime, where pre/post run, how many instances of each GPU step, the
detector's compile mode, and how the server shares the GPU (MPS, Triton's CUDA memory pool). `make build-engines`
writes the repository from it and `make serve` starts the server with it; expert flags of both scripts change
single fields (``--help``). Why these values: docs/gpu.md.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

# the detector: ONNX in our Python model (CPU), a plan on Triton's TensorRT backend, or our PyTorch modules
RUNTIMES = ("onnxruntime", "tensorrt", "torch")
PREPOST = ("cpu", "gpu")  # where decode/letterbox and thresholds/NMS run
# torch.compile modes of the RUNTIME=torch detector on a GPU (not "reduce-overhead": it brings its own CUDA graphs)
TORCH_COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")
MPS_MODES = ("auto", "on", "off")  # auto: on where the host has a GPU and the MPS daemon, else off (said why)


@dataclasses.dataclass(frozen=True)
class Placement:
    runtime: str
    prepost: str  # "gpu": torch + nvJPEG, tensors stay on the GPU between the steps (DLPack)
    gpu: bool  # Python-backend detectors (onnxruntime, torch) on KIND_GPU; a TensorRT plan always is
    half: bool  # RUNTIME=torch on a GPU: FP16 weights and activations (False: FP32)
    gpu_instances: int  # instances of each GPU step per GPU
    gpus: Tuple[int, ...]  # the GPUs of the GPU steps (empty: every GPU the server sees, Triton's default)
    gpu_queue_delay_us: int  # a GPU step takes milliseconds, not the CPU's hundreds: its batcher waits less
    torch_compile: str  # RUNTIME=torch on a GPU: the detector through torch.compile before its CUDA graphs
    cpu_twin: bool  # also <model>_e2e_cpu: CPU pre/post around the same detector (`make bench` case c)
    mps: str  # the server's CUDA contexts under a private MPS daemon (yolo_triton/serving/mps.py)
    cuda_pool_mib: int  # Triton's CUDA memory pool per GPU, through which GPU tensors pass between steps

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r}; known: {', '.join(RUNTIMES)}")
        if self.prepost not in PREPOST:
            raise ValueError(f"prepost {self.prepost!r}; known: {', '.join(PREPOST)}")
        if self.prepost == "gpu" and not self.gpu:
            raise ValueError("GPU pre/post needs the GPU (gpu=True)")
        if self.gpu_instances < 1 or any(g < 0 for g in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpu_instances {self.gpu_instances} must be ≥ 1, gpus {self.gpus} distinct ids ≥ 0")
        if self.gpu_queue_delay_us < 0 or self.cuda_pool_mib < 0:
            raise ValueError("gpu_queue_delay_us and cuda_pool_mib must be ≥ 0")
        if self.torch_compile not in TORCH_COMPILE_MODES:
            raise ValueError(f"torch_compile {self.torch_compile!r}; known: {', '.join(TORCH_COMPILE_MODES)}")
        if self.mps not in MPS_MODES:
            raise ValueError(f"mps {self.mps!r}; known: {', '.join(MPS_MODES)}")

    def replace(self, **changes) -> "Placement":
        """This placement with some fields changed (None leaves a field as it is); validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def detector_on_gpu(self) -> bool:
        return self.gpu or self.runtime == "tensorrt"


PRESETS: Dict[str, Placement] = {
    # the embedded Triton on any machine: onnxruntime and OpenCV on the CPU
    "cpu": Placement(runtime="onnxruntime", prepost="cpu", gpu=False, half=True, gpu_instances=1, gpus=(),
                     gpu_queue_delay_us=100, torch_compile="off", cpu_twin=False, mps="off", cuda_pool_mib=0),
    # a GPU host without TensorRT: our PyTorch detector compiled, nvJPEG and NMS on the GPU, two instances of each
    # step sharing the GPU under MPS (the fastest set-up measured, docs/gpu.md)
    "gpu": Placement(runtime="torch", prepost="gpu", gpu=True, half=True, gpu_instances=2, gpus=(),
                     gpu_queue_delay_us=100, torch_compile="default", cpu_twin=False, mps="auto", cuda_pool_mib=4096),
}
DEVICES = tuple(PRESETS)


def batch_buckets(max_batch: int) -> List[int]:
    """The batch sizes the GPU detector has a CUDA graph for (1, 2, 4, … up to ``max_batch``): a batch runs in the
    smallest that holds it, so the GPU detector's batcher prefers exactly these sizes."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]

"""Detector for RUNTIME=torch: our own PyTorch YOLOv7 / YOLOv4 modules, for GPU hosts without TensorRT.

The weights are the artifact ``python -m build.create_onnx --save-torch`` wrote next to the ONNX (same network). On
a GPU instance: FP16, channels_last, compiled — the ahead-of-time package `make build-engines`
built (``model.pt2``, AOTInductor) where it fits this GPU and torch, else ``torch.compile`` at load (config parameter
torch_compile, from the placement; "off" loads fast and uncompiled; every fallback said in the log) — and one CUDA
graph per batch bucket (the config's preferred batch sizes and max_batch_size, else 1, 2, 4, … up to
max_batch_size; a batch runs in the smallest bucket that holds it), compiled and captured at load so that no
request pays for it. With rectangular inference, graphs per shape bucket and batch bucket, of the uncompiled
network. On a CPU instance (a host without GPU, and the CI): FP32, eager. Inputs and outputs move by DLPack, so a
GPU preprocess hands its tensor over without a host copy. Output: FP32 raw grid, as the ONNX's.
"""
from __future__ import annotations

import os
import time

import torch
import triton_python_backend_utils as pb_utils

from yolo_triton import specs
from yolo_triton.pipeline.gpu_detector import detector_runner, graph_buckets, prepare_for_gpu
from yolo_triton.models.torch_artifact import load_torch_artifact

from .common import (StepTimes, config_parameters, error_response, groups_by_shape, input_tensor, logger,
                     output_tensor, parse_model_config, pick_device, process_age, request_slices)


class TritonPythonModel:
    def initialize(self, args):
        before, started = process_age(), time.perf_counter()
        config = parse_model_config(args)
        params = config_parameters(config)
        self.device = pick_device(args)
        path = os.path.join(args["model_repository"], args["model_version"], params["torch_file"])
        model, spec = load_torch_artifact(path)
        if model.artifact_meta.get("random_weights") == "true":
            logger.warning("%s: RANDOM WEIGHTS (seed %s): boxes from this model are meaningless", args["model_name"],
                           model.artifact_meta.get("seed"))
        self.max_batch_size = max(1, int(config.get("max_batch_size", 1)))
        gpu = self.device.type == "cuda"
        half = gpu and params["half"] == "true"
        self.dtype = torch.float16 if half else torch.float32
        self.model = model = prepare_for_gpu(model, self.device, self.dtype) if gpu else model.to(self.device)
        weights = time.perf_counter() - started
        self.runner, self.compiled = None, "off"
        if gpu and params["cuda_graphs"] == "true":
            name = args["model_name"]
            version = os.path.join(args["model_repository"], args["model_version"])
            # rectangular inference: graphs for every shape bucket the preprocess may send
            shapes = [(3, *hw) for hw in spec.rect_buckets()] if spec.rect else (3, *spec.input_size)
            preferred = [int(b) for b in config.get("dynamic_batching", {}).get("preferred_batch_size", [])]
            self.runner, self.compiled = detector_runner(model, shapes, self.max_batch_size, self.device,
                                                         self.dtype, params["torch_compile"],
                                                         os.path.join(version, params["aot_file"]),
                                                         lambda message, warn: (logger.warning if warn else logger.info)(
                                                             "%s: %s", name, message),
                                                         os.path.join(version, params["compile_cache_file"]),
                                                         graph_buckets(preferred, self.max_batch_size))
        # where a slow start went: the stub's start and imports, the weights onto the device (CUDA's start on it
        # included), the rest (the detector's compiling and graphs, said above)
        logger.info("%s: %s on %s, %s, compiled %s, CUDA graphs %s; the stub's start and imports %.1f s, then "
                    "initialize %.1f s (the weights onto %s %.1f s)", args["model_name"], spec.name, self.device,
                    self.dtype, self.compiled, self.runner.buckets if self.runner else "off", before,
                    time.perf_counter() - started, self.device, weights)
        self.times = StepTimes(args["model_name"], ["inputs", "infer", "responses"], self.device)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.runner is not None:
            return self.runner(batch)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.model(batch).float()

    def execute(self, requests):
        self.times.begin()
        try:
            images = [input_tensor(r, specs.DETECTOR_INPUT) for r in requests]
            self.times.lap()
            outputs = [None] * len(images)
            with torch.inference_mode():
                for members in groups_by_shape(images):
                    # each input onto this instance's GPU first: with several GPUs, a batch may gather from several
                    group = [images[i].to(self.device) for i in members]
                    result = self._run(torch.cat(group) if len(group) > 1 else group[0])
                    for i, part in zip(members, request_slices(group)):
                        outputs[i] = result[part]
            self.times.gpu_done()
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            self.times.lap()
        except Exception as error:  # a failure fails this batch's requests, not the server
            return [error_response(f"detector failed: {error}", pb_utils.TritonError.INTERNAL) for _ in requests]
        responses = [pb_utils.InferenceResponse(output_tensors=[output_tensor(specs.DETECTOR_OUTPUT, output)])
                     for output in outputs]
        self.times.lap()
        self.times.end(sum(len(output) for output in outputs))
        return responses

    def finalize(self):
        self.times.close()
        self.runner = None
        self.model = None

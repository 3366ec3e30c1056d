"""Preprocess on the GPU: every image of the scheduler's batch is decoded (nvJPEG for JPEG, in one call) and
letterboxed on the GPU into one tensor (one per canvas shape with rectangular inference), handed to the detector on
the GPU (DLPack, no host copy). An image that fails fails its own request only, with the same messages as the CPU
preprocess."""
from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from yolo_triton import specs
from yolo_triton.pipeline.gpu_preprocess import preprocess_requests, warm_up_preprocess

from . import preprocess as cpu
from .common import StepTimes, output_tensor, pick_device

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class TritonPythonModel(cpu.TritonPythonModel):
    def initialize(self, args):
        super().initialize(args)
        self.device = pick_device(args)
        self.torch_dtype = TORCH_DTYPES[np.dtype(self.image_dtype).name]
        self.times = StepTimes(args["model_name"], ["inputs", "decode_letterbox", "gpu_wait", "responses"], self.device)
        if self.device.type == "cuda":
            with torch.inference_mode():
                warm_up_preprocess(self.target_hw, self.device, self.pad_value, self.limits, self.torch_dtype, self.fit)

    def execute(self, requests):
        self.times.begin()
        per_request = [pb_utils.get_input_tensor_by_name(r, specs.ENSEMBLE_INPUT).as_numpy().reshape(-1) for r in requests]
        self.times.lap()
        with torch.inference_mode():
            results = preprocess_requests(per_request, self.target_hw, self.device, self.pad_value, self.limits,
                                          self.torch_dtype, self.fit, self.rect_buckets, self.stride)
        self.times.lap()
        self.times.gpu_done()
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the tensors are complete before Triton reads them
        self.times.lap()
        responses = []
        for encoded, result in zip(per_request, results):
            if isinstance(result[1], Exception):  # (index, error) of the request's first image that failed
                responses.append(self._image_error(*result, len(encoded)))
            else:
                images, metas = result
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    output_tensor(specs.DETECTOR_INPUT, images),
                    pb_utils.Tensor(specs.LETTERBOX_META, metas),
                ]))
        self.times.lap()
        self.times.end(sum(len(encoded) for encoded in per_request))
        return responses

    def finalize(self):
        self.times.close()

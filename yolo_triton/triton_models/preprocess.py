"""Preprocess step of the ensemble: encoded image bytes → letterboxed FP32 NCHW tensor + letterbox meta."""
from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from yolo_triton import specs
from yolo_triton.boxes import META_SIZE
from yolo_triton.pipeline.decode import DecodeLimits, ImageDecodeError
from yolo_triton.pipeline.preprocess import preprocess_image

from .common import config_parameters, error_response, output_dtype, parse_model_config


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        params = config_parameters(config)
        image_dims = pb_utils.get_output_config_by_name(config, specs.DETECTOR_INPUT)["dims"]
        # the detector's input size is read from this model's own output dims, which the spec generated
        self.target_hw = (int(image_dims[1]), int(image_dims[2]))
        self.image_dtype = output_dtype(config, specs.DETECTOR_INPUT)
        self.pad_value = float(params["pad_value"])
        self.fit = params["fit"]
        self.limits = DecodeLimits(
            max_bytes=int(params["max_image_bytes"]),
            max_pixels=int(params["max_image_pixels"]),
        )

    def execute(self, requests):
        return [self._execute_one(request) for request in requests]

    def _execute_one(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, specs.ENSEMBLE_INPUT).as_numpy().reshape(-1)
        images = np.empty((len(encoded), 3) + self.target_hw, dtype=self.image_dtype)
        metas = np.empty((len(encoded), META_SIZE), dtype=np.float32)
        for index, data in enumerate(encoded):
            try:
                tensor, meta = preprocess_image(data, self.target_hw, self.pad_value, self.limits, self.fit)
            except Exception as error:  # any failure on one image fails its request only, never the batch
                where = f"{specs.ENSEMBLE_INPUT}[{index}]: " if len(encoded) > 1 else ""
                kind = "" if isinstance(error, ImageDecodeError) else "cannot preprocess image: "
                return error_response(f"{where}{kind}{error}")
            images[index] = tensor
            metas[index] = meta.to_array()
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(specs.DETECTOR_INPUT, images), pb_utils.Tensor(specs.LETTERBOX_META, metas)]
        )

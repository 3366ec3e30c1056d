"""Preprocess step of the ensemble: encoded image bytes → letterboxed FP32 NCHW tensor + letterbox meta.

With rectangular inference (the ``rect_buckets`` parameter) the images of a request are letterboxed as
``detect.py``'s default onto the smallest detector shape that holds them all (``boxes.rect_canvas``); the tensor's
shape says which, and Triton batches only requests of one shape together."""
from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from yolo_triton import specs
from yolo_triton.boxes import META_SIZE, rect_canvas
from yolo_triton.pipeline.decode import DecodeLimits, ImageDecodeError, decode_image
from yolo_triton.pipeline.preprocess import fit_image

from .common import config_parameters, error_response, output_dtype, parse_model_config


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        params = config_parameters(config)
        self.target_hw = tuple(int(v) for v in params["input_size"].split(","))
        buckets = params.get("rect_buckets")
        self.rect_buckets = [tuple(int(v) for v in b.split(",")) for b in buckets.split(";")] if buckets else None
        self.stride = int(params.get("stride", 32))
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
        decoded = []
        for index, data in enumerate(encoded):
            try:
                decoded.append(decode_image(data, self.limits))
            except Exception as error:  # any failure on one image fails its request only, never the batch
                return self._image_error(index, error, len(encoded))
        canvas, scale = self.target_hw, None
        if self.rect_buckets:
            canvas = rect_canvas([image.shape[:2] for image in decoded], self.rect_buckets, self.target_hw, self.stride)
            scale = self.target_hw
        images = np.empty((len(encoded), 3) + canvas, dtype=self.image_dtype)
        metas = np.empty((len(encoded), META_SIZE), dtype=np.float32)
        for index, image in enumerate(decoded):
            try:
                images[index], meta = fit_image(image, canvas, self.pad_value, self.fit, scale)
            except Exception as error:
                return self._image_error(index, error, len(encoded))
            metas[index] = meta.to_array()
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(specs.DETECTOR_INPUT, images), pb_utils.Tensor(specs.LETTERBOX_META, metas)]
        )

    @staticmethod
    def _image_error(index, error, count):
        where = f"{specs.ENSEMBLE_INPUT}[{index}]: " if count > 1 else ""
        kind = "" if isinstance(error, ImageDecodeError) else "cannot preprocess image: "
        return error_response(f"{where}{kind}{error}")

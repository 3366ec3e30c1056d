"""Postprocess on the GPU: the raw-grid detector output stays on the GPU (DLPack); thresholds and NMS for every
image of the scheduler's batch run there in one go (``pipeline.gpu_postprocess.postprocess_batch``); only the final boxes
come to the host. Other layouts (their NMS is done or tiny) use the CPU postprocess unchanged."""
from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from yolo_triton import specs
from yolo_triton.pipeline.gpu_postprocess import postprocess_batch, warm_up_postprocess

from . import postprocess as cpu
from .common import StepTimes, error_response, groups_by_shape, input_tensor, pick_device, request_slices


class TritonPythonModel(cpu.TritonPythonModel):
    def initialize(self, args):
        super().initialize(args)
        self.device = pick_device(args)
        self.times = StepTimes(args["model_name"], ["inputs", "nms_to_host", "responses"], self.device)
        if self.device.type == "cuda" and self.layout == specs.LAYOUT_RAW_GRID:
            rows, width = self.detector_outputs[0].dims
            rows = rows if rows > 0 else 25200  # a dynamic row count: YOLOv7-640's
            width = width if width > 0 else 5 + len(self.labels)
            with torch.inference_mode():
                warm_up_postprocess(rows, width, self.input_size, self.device)

    def execute(self, requests):
        if self.layout != specs.LAYOUT_RAW_GRID:
            return super().execute(requests)
        self.times.begin()
        responses = [None] * len(requests)
        good, params, predictions, metas = [], [], [], []
        for index, request in enumerate(requests):
            try:
                request_params = self.request_params(request)
            except ValueError as error:
                responses[index] = error_response(f"bad request parameter: {error}")
                continue
            prediction = input_tensor(request, specs.DETECTOR_OUTPUT).to(self.device, non_blocking=True)
            meta = input_tensor(request, specs.LETTERBOX_META).cpu().numpy()
            good.append(index)
            predictions.append(prediction)
            metas.append(meta)
            params.append([request_params] * len(prediction))
        self.times.lap()
        answers = {}
        for members in groups_by_shape(predictions):  # requests of one detector shape in one go
            group = [predictions[j] for j in members]
            try:
                with torch.inference_mode():
                    results = postprocess_batch(torch.cat(group), np.concatenate([metas[j] for j in members]),
                                                [p for j in members for p in params[j]])
            except Exception:  # e.g. CUDA out of memory for one request's huge candidate set (conf near 0)
                torch.cuda.empty_cache()
                continue
            answers.update((j, results[part]) for j, part in zip(members, request_slices(group)))
        self.times.gpu_done()
        self.times.lap()
        for j, index in enumerate(good):
            if j in answers:
                responses[index] = self._answer(answers[j])
            else:  # its batch failed as a whole: each request alone, so only the culprit fails
                responses[index] = self._answer_alone(predictions[j], metas[j], params[j])
        self.times.lap()
        self.times.end(sum(len(p) for p in params))
        return responses

    def _answer(self, detections):
        return pb_utils.InferenceResponse(output_tensors=cpu.pack_detections(detections, self.labels))

    def _answer_alone(self, prediction, meta, params):
        try:
            with torch.inference_mode():
                detections = postprocess_batch(prediction, meta, params)
        except RuntimeError as error:  # torch's, CUDA out of memory among them
            torch.cuda.empty_cache()
            return error_response(f"postprocess failed for this request (raise conf_threshold: too many candidate "
                                  f"boxes): {str(error).splitlines()[0]}", pb_utils.TritonError.INTERNAL)
        except Exception as error:  # the host's way (NumPy, OpenCV): this request alone fails
            return error_response(f"postprocess failed for this request: {type(error).__name__}: {error}",
                                  pb_utils.TritonError.INTERNAL)
        return self._answer(detections)

    def finalize(self):
        self.times.close()

"""Postprocess step of the ensemble: detector output + letterbox meta → boxes, scores, classes, names.

Thresholds and options default from config.pbtxt ``parameters``; a request may override them with Triton request
parameters (``conf_threshold``, ``iou_threshold``, ``max_detections``, ``classes``, ``agnostic_nms``,
``multi_label``: ``specs.DetectionParams``), which the ensemble passes down.
The detector's output layout is the ``layout`` parameter; at load, our declared inputs are checked against
that layout and against the outputs the detector's own config.pbtxt declares.
"""
from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from yolo_triton import layouts, specs
from yolo_triton.boxes import LetterboxMeta
from yolo_triton.pipeline.postprocess import postprocess
from yolo_triton.specs import DetectionParams
from yolo_triton.repository import check_against_detector_config

from .common import config_parameters, error_response, parse_model_config


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        params = config_parameters(config)
        self.layout = params["layout"]
        self.input_size = tuple(int(v) for v in params["input_size"].split(","))
        self.labels = np.array([name.encode() for name in json.loads(params["labels"])], dtype=object)
        self.detector_outputs = [
            specs.TensorSpec(t["name"], t["data_type"], tuple(int(d) for d in t["dims"]))
            for t in config["input"] if t["name"] != specs.LETTERBOX_META
        ]
        try:
            self.defaults = DetectionParams().updated(
                {key: params[key] for key in DetectionParams.KEYS if key in params}, len(self.labels))
            layouts.check_request(self.layout, self.defaults)
            layouts.check_detector_outputs(self.layout, self.detector_outputs, len(self.labels))
            detector_config = os.path.join(os.path.dirname(args["model_repository"]), params["detector_model"], "config.pbtxt")
            check_against_detector_config(self.detector_outputs, detector_config)
        except ValueError as error:
            raise pb_utils.TritonModelException(f"{args['model_name']}: {error}") from None

    def execute(self, requests):
        return [self._execute_one(request) for request in requests]

    def request_params(self, request) -> DetectionParams:
        """The request's parameters over the config's; ValueError says what is wrong with them."""
        params = DetectionParams.from_request_json(self.defaults, request.parameters(), len(self.labels))
        layouts.check_request(self.layout, params)
        return params

    def _execute_one(self, request):
        try:
            params = self.request_params(request)
        except ValueError as error:
            return error_response(f"bad request parameter: {error}")
        outputs = {t.name: pb_utils.get_input_tensor_by_name(request, t.name).as_numpy() for t in self.detector_outputs}
        metas = pb_utils.get_input_tensor_by_name(request, specs.LETTERBOX_META).as_numpy()
        try:
            results = [
                postprocess({name: value[i] for name, value in outputs.items()}, LetterboxMeta.from_array(meta), params,
                            self.layout, self.input_size)
                for i, meta in enumerate(metas)
            ]
        except ValueError as error:  # a detector output that does not parse fails this request, not the model
            return error_response(f"cannot read detector output: {error}", pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(output_tensors=pack_detections(results, self.labels))


def pack_detections(results, labels):
    """A request may hold several images: pad to its largest count; ``num_detections`` says how many are real."""
    batch, width = len(results), max((len(r) for r in results), default=0)
    counts = np.array([[len(r)] for r in results], dtype=np.int32)
    boxes = np.zeros((batch, width, 4), np.float32)
    scores = np.zeros((batch, width), np.float32)
    classes = np.full((batch, width), -1, np.int32)
    names = np.full((batch, width), b"", dtype=object)
    for i, result in enumerate(results):
        n = len(result)
        boxes[i, :n], scores[i, :n], classes[i, :n] = result.boxes, result.scores, result.classes
        names[i, :n] = labels[result.classes]
    values = (counts, boxes, scores, classes, names)
    return [pb_utils.Tensor(name, value) for name, value in zip(specs.ENSEMBLE_OUTPUTS, values)]

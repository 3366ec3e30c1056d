"""Detector step on the embedded default: the exported ONNX run by onnxruntime on the CPU.

Requests arriving together (dynamic batching) are stacked into one batch, run once, and split back, so this
model batches like the TensorRT plan that replaces it on GPU hosts; the ensemble does not change.
"""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from yolo_triton import specs

from .common import config_parameters, error_response, groups_by_shape, logger, parse_model_config, request_slices


class TritonPythonModel:
    def initialize(self, args):
        config = parse_model_config(args)
        params = config_parameters(config)
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_file"])
        options = ort.SessionOptions()
        threads = int(params["intra_op_threads"])  # 0: onnxruntime picks (all cores)
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.max_batch_size = max(1, int(config.get("max_batch_size", 1)))
        self._check_io(config, path)
        # an ONNX exported with a fixed batch (official export.py without --dynamic-batch: 1) runs in chunks of it
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata.get("random_weights") == "true":
            logger.warning("%s: RANDOM WEIGHTS (seed %s): boxes from this model are meaningless", args["model_name"], metadata.get("seed"))

    def _check_io(self, config, path):
        """The ONNX must have exactly the tensors config.pbtxt declares (names and per-item dims)."""
        declared = {
            "input": {t["name"]: [int(d) for d in t["dims"]] for t in config["input"]},
            "output": {t["name"]: [int(d) for d in t["dims"]] for t in config["output"]},
        }
        actual = {
            "input": {t.name: t.shape[1:] for t in self.session.get_inputs()},
            "output": {t.name: t.shape[1:] for t in self.session.get_outputs()},
        }
        for kind in ("input", "output"):
            if set(declared[kind]) != set(actual[kind]):
                raise pb_utils.TritonModelException(
                    f"{path}: {kind}s {sorted(actual[kind])} differ from config.pbtxt {sorted(declared[kind])}"
                )
            for name, dims in declared[kind].items():
                onnx_dims = actual[kind][name]
                if any(isinstance(a, int) and a != d for a, d in zip(onnx_dims, dims)) or len(onnx_dims) != len(dims):
                    raise pb_utils.TritonModelException(f"{path}: {kind} {name} has dims {onnx_dims}, config.pbtxt says {dims}")
        self.output_names = [t.name for t in self.session.get_outputs()]

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, specs.DETECTOR_INPUT).as_numpy() for r in requests]
        responses = [None] * len(requests)
        for members in groups_by_shape(images):
            group = [images[i] for i in members]
            try:
                outputs = self._run(np.concatenate(group) if len(group) > 1 else group[0])
            except Exception as error:  # an onnxruntime failure fails this batch's requests, not the server
                for i in members:
                    responses[i] = error_response(f"detector failed: {error}", pb_utils.TritonError.INTERNAL)
                continue
            for i, part in zip(members, request_slices(group)):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(out[part])) for name, out in zip(self.output_names, outputs)])
        return responses

    def _run(self, batch):
        # a scheduler batch never exceeds max_batch_size, but client-side batches stacked together could
        size = self.fixed_batch or self.max_batch_size
        results = []
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            real = len(chunk)
            if self.fixed_batch and real < size:  # fill a fixed-batch model's last chunk; the filler is dropped
                chunk = np.concatenate([chunk, np.zeros((size - real,) + chunk.shape[1:], chunk.dtype)])
            results.append([out[:real] for out in self.session.run(self.output_names, {specs.DETECTOR_INPUT: chunk})])
        return [np.concatenate(parts) for parts in zip(*results)]

    def finalize(self):
        self.session = None

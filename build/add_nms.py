#!/usr/bin/env python3
"""Build stage 1b (optional): a raw-grid ONNX → an end2end ONNX whose NMS runs inside the TensorRT engine.

    python -m build.add_nms --onnx build/artifacts/yolov7.onnx --output build/artifacts/yolov7-end2end.onnx \
        --conf 0.25 --iou 0.45 --top-k 100

Appends to the graph what the official ``export.py --end2end`` puts there: scores = objectness × class scores,
then one ``EfficientNMS_TRT`` node (TensorRT's built-in plugin; boxes given centre-size, returned as corners)
with outputs ``num_dets`` INT32 [N,1], ``det_boxes`` FP32 [N,k,4], ``det_scores`` FP32 [N,k], ``det_classes``
INT32 [N,k] — the ``efficient_nms`` layout the postprocess reads (it then only maps boxes back).

The result runs on TensorRT only (onnxruntime has no such op). The graph surgery is checked here with onnx's
checker and shape inference; the engine built from it has not been run here (no TensorRT).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from yolo_triton import errors, specs

NMS_OP = "EfficientNMS_TRT"
NMS_DOMAIN = "TRT"  # as the official export (torch's g.op("TRT::EfficientNMS_TRT")); TensorRT finds plugins by name
NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")


def add_efficient_nms(model: onnx.ModelProto, conf: float = 0.25, iou: float = 0.45, top_k: int = 100) -> onnx.ModelProto:
    graph = model.graph
    if len(graph.output) != 1 or graph.output[0].name != specs.DETECTOR_OUTPUT:
        raise ValueError(f"expected one raw-grid output {specs.DETECTOR_OUTPUT!r}, found {[o.name for o in graph.output]}")
    dims = graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].dim_value or dims[2].dim_value < 6:
        raise ValueError("the raw-grid output must be [N, K, 5 + classes] with a known last dimension")
    values = dims[2].dim_value
    raw = specs.DETECTOR_OUTPUT

    def const(name, values_):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values_)], values_))

    nodes = [
        const("nms_axes", [2]),
        const("nms_0", [0]), const("nms_4", [4]), const("nms_5", [5]), const("nms_end", [values]),
        helper.make_node("Slice", [raw, "nms_0", "nms_4", "nms_axes"], ["nms_boxes"]),  # cx, cy, w, h
        helper.make_node("Slice", [raw, "nms_4", "nms_5", "nms_axes"], ["nms_objectness"]),
        helper.make_node("Slice", [raw, "nms_5", "nms_end", "nms_axes"], ["nms_class_scores"]),
        helper.make_node("Mul", ["nms_class_scores", "nms_objectness"], ["nms_scores"]),
        helper.make_node(
            NMS_OP, ["nms_boxes", "nms_scores"], list(NMS_OUTPUTS), domain=NMS_DOMAIN, name="end2end_nms",
            background_class=-1, box_coding=1, iou_threshold=float(iou), max_output_boxes=int(top_k),
            plugin_version="1", score_activation=0, score_threshold=float(conf),
        ),
    ]
    graph.node.extend(nodes)
    batch = dims[0].dim_param or dims[0].dim_value or "batch"
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("num_dets", TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [batch, top_k, 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [batch, top_k]),
        helper.make_tensor_value_info("det_classes", TensorProto.INT32, [batch, top_k]),
    ])
    if not any(o.domain == NMS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(NMS_DOMAIN, 1))
    entry = model.metadata_props.add()
    entry.key, entry.value = "end2end", f"{NMS_OP} conf={conf} iou={iou} top_k={top_k}"
    for prop in model.metadata_props:
        if prop.key == "layout":
            prop.value = specs.LAYOUT_EFFICIENT_NMS
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="raw-grid ONNX (build/create_onnx.py)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--conf", type=float, default=0.25, help="score threshold inside the engine")
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--top-k", type=int, default=100, help="detections kept per image (det_boxes' second dim)")
    args = parser.parse_args(argv)
    model = add_efficient_nms(onnx.load(str(args.onnx)), args.conf, args.iou, args.top_k)
    onnx.checker.check_model(model)  # custom-domain nodes are not type-checked, the rest is
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.output))
    print(f"wrote {args.output}: {NMS_OP} conf {args.conf} iou {args.iou} top-k {args.top_k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(errors.run(main, "add_nms"))

"""Bring your own ONNX: inspect a detector exported by the official YOLOv7 ``export.py`` and fit a spec to it.

What the official ``export.py`` writes (input ``images`` FP32 ``[B, 3, H, W]``):

* ``--grid``: one output ``output`` FP32 ``[B, K, 5 + nc]`` (boxes in input pixels, sigmoid applied), i.e.
  :data:`~yolo_triton.specs.LAYOUT_RAW_GRID`; ``B`` is 1 unless ``--dynamic-batch`` (then ``"batch"``);
* ``--grid --end2end`` (TensorRT NMS): ``num_dets`` INT32 ``[B, 1]``, ``det_boxes`` FP32 ``[B, topk, 4]``,
  ``det_scores`` FP32 ``[B, topk]``, ``det_classes`` INT32 ``[B, topk]`` from an ``EfficientNMS_TRT`` node (domain
  ``TRT``; ``--include-nms`` adds the same node in the default domain through onnx-graphsurgeon), i.e.
  :data:`~yolo_triton.specs.LAYOUT_EFFICIENT_NMS`. export.py rewrites every dim of these outputs as a
  ``dim_param`` string (``"1"``, ``"100"``, ``"batch"``): digit strings are read as sizes here.

Public API: :func:`inspect_onnx` -> :class:`OnnxInfo`; :func:`check_for_runtime`; :func:`spec_for_onnx`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import onnx
from onnx import TensorProto

from .. import layouts, specs
from ..specs import EFFICIENT_NMS_OUTPUTS

RUNTIMES = ("onnxruntime", "tensorrt")  # the runtimes that run an ONNX file (placement.RUNTIMES: also torch)
# Domains whose operators onnx itself defines, and those onnxruntime implements besides them.
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")
ONNXRUNTIME_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")
TENSORRT_DOMAIN = "TRT"  # torch.onnx's g.op("TRT::EfficientNMS_TRT", ...) in the official models/experimental.py

Dim = Union[int, str, None]  # a size, a symbolic name, or unknown

SUPPORTED_LAYOUTS_TEXT = (
    f"{specs.LAYOUT_RAW_GRID!r}: one output [B, K, 5 + nc] (official export.py --grid); "
    f"{specs.LAYOUT_EFFICIENT_NMS!r}: outputs {', '.join(EFFICIENT_NMS_OUTPUTS)} (export.py --grid --end2end, "
    "TensorRT EfficientNMS_TRT)")


class OnnxImportError(ValueError):
    """The ONNX file is not a detector layout we can serve, or does not fit the spec / runtime."""


@dataclasses.dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX detector file is, as far as serving it goes."""

    path: str
    input_name: str
    input_size: Optional[Tuple[int, int]]  # (height, width); None when exported with dynamic height/width
    batch: Optional[int]  # fixed batch size (1 for export.py without --dynamic-batch); None when dynamic
    input_dtype: str  # "FLOAT", "FLOAT16", … (TensorProto name)
    layout: str  # specs.LAYOUT_RAW_GRID or specs.LAYOUT_EFFICIENT_NMS
    num_classes: Optional[int]  # None when the file does not say (EfficientNMS scores of unknown shape)
    num_candidates: Optional[int]  # K: raw grid rows, or boxes fed to the NMS node; None when unknown
    top_k: Optional[int]  # LAYOUT_EFFICIENT_NMS: detection slots per image (det_boxes dim 1); else None
    output_names: Tuple[str, ...]
    output_shapes: Tuple[Tuple[Dim, ...], ...]
    custom_ops: Tuple[str, ...]  # op types outside the standard ONNX operator set, e.g. ("EfficientNMS_TRT",)
    custom_op_domains: Tuple[Tuple[str, str], ...]  # (domain, op type) of each custom op
    nms_attributes: Dict[str, Any]  # the NMS node's attributes (iou/score thresholds baked into the graph…)
    metadata: Dict[str, str]  # metadata_props
    opset: Optional[int]  # default-domain opset

    @property
    def tensorrt_only_ops(self) -> Tuple[str, ...]:
        """Custom ops only TensorRT (its plugin library) implements: the ``TRT`` domain or a ``*_TRT`` name."""
        return tuple(sorted({op for domain, op in self.custom_op_domains
                             if domain == TENSORRT_DOMAIN or op.endswith("_TRT")}))


def _dims(value_info: onnx.ValueInfoProto) -> Optional[Tuple[Dim, ...]]:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: List[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            # official export.py --end2end writes even fixed sizes as dim_param strings ("1", "100")
            dims.append(int(d.dim_param) if d.dim_param.isdigit() else d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _size(dim: Dim) -> Optional[int]:
    return dim if isinstance(dim, int) else None


def _dtype(value_info: onnx.ValueInfoProto) -> str:
    return TensorProto.DataType.Name(value_info.type.tensor_type.elem_type)


def _describe(names: Sequence[str], shapes: Sequence[Optional[Tuple[Dim, ...]]]) -> str:
    def shape(s):
        return "?" if s is None else "[" + ", ".join("?" if d is None else str(d) for d in s) + "]"
    return ", ".join(f"{n} {shape(s)}" for n, s in zip(names, shapes)) or "none"


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _is_custom(node: onnx.NodeProto, local_functions: set) -> bool:
    if (node.domain, node.op_type) in local_functions:
        return False
    if node.domain not in STANDARD_DOMAINS:
        return True
    return not onnx.defs.has(node.op_type, node.domain)


def _attributes(node: onnx.NodeProto) -> Dict[str, Any]:
    def plain(value):
        return value.decode() if isinstance(value, bytes) else value

    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        out[attr.name] = [plain(v) for v in value] if isinstance(value, (list, tuple)) else plain(value)
    return out


def _nms_scores_shape(model: onnx.ModelProto, nms: onnx.NodeProto) -> Optional[Tuple[Dim, ...]]:
    """Shape of the NMS node's inputs (boxes, scores) from ONNX shape inference, where it can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom ops or an old opset can stop inference; then the class count is unknown
        return None
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    scores = nms.input[1] if len(nms.input) > 1 else None
    return _dims(known[scores]) if scores in known else None


def _output_shapes(path: str, model: onnx.ModelProto, input_name: str, in_dims: Tuple[Dim, ...],
                   nms_nodes: Sequence[onnx.NodeProto]) -> Tuple[Optional[Tuple[Dim, ...]], ...]:
    """The outputs' shapes, however the exporter wrote them. Declared sizes are taken as they are; where a size is
    symbolic or the shape missing (``export.py --grid --dynamic-batch`` declares ``[batch, Concatoutput_dim_1,
    Concatoutput_dim_2]``, ``--include-nms`` no shape at all), it comes from the EfficientNMS node's attributes
    (the outputs of a TensorRT-only op, which nothing here can run) or from one dry run at batch 1 with onnxruntime.
    The batch dimension keeps its declared name."""
    declared = [_dims(o) for o in model.graph.output]
    if all(s is not None and all(isinstance(d, int) for d in s[1:]) for s in declared):
        return tuple(declared)
    names = [o.name for o in model.graph.output]
    batch = in_dims[0] if in_dims[0] is not None else "batch"
    for node in nms_nodes:  # EfficientNMS_TRT's outputs: num_detections, boxes, scores, classes
        top_k = _attributes(node).get("max_output_boxes")
        if list(node.output) == names and isinstance(top_k, int):
            return ((batch, 1), (batch, top_k, 4), (batch, top_k), (batch, top_k))
    height, width = _size(in_dims[2]), _size(in_dims[3])
    if height and width:
        try:
            import numpy as np
            import onnxruntime as ort

            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            ran = session.run(None, {input_name: np.zeros((_size(in_dims[0]) or 1, 3, height, width), np.float32)})
            return tuple((shape[0] if shape else batch, *out.shape[1:]) for shape, out in zip(declared, ran))
        except Exception:  # not runnable here (custom ops): the declared shapes are all there is
            pass
    return tuple(declared)


def inspect_onnx(path: Union[str, os.PathLike]) -> OnnxInfo:
    """Read an ONNX detector file and say what it is (see the module docstring for the layouts).

    Raises :class:`OnnxImportError` (a ``ValueError``) when the file has not exactly one image input
    ``[B, 3, H, W]`` or its outputs are neither of the supported layouts; the message lists what it found.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        raise OnnxImportError(f"{path}: expected one image input, found {len(inputs)}: "
                              f"{_describe([i.name for i in inputs], [_dims(i) for i in inputs])}")
    image = inputs[0]
    in_dims = _dims(image)
    if in_dims is None or len(in_dims) != 4 or in_dims[1] != 3:
        raise OnnxImportError(f"{path}: input {_describe([image.name], [in_dims])} is not an image batch "
                              "[B, 3, H, W] (NCHW, RGB)")
    h, w = _size(in_dims[2]), _size(in_dims[3])
    input_size = (h, w) if h and w else None

    out_names = tuple(o.name for o in graph.output)
    local_functions = {(f.domain, f.name) for f in model.functions}
    custom = [n for n in _all_nodes(graph) if _is_custom(n, local_functions)]
    custom_op_domains = tuple(sorted({(n.domain, n.op_type) for n in custom}))
    custom_ops = tuple(sorted({op for _, op in custom_op_domains}))
    nms_nodes = [n for n in custom if n.op_type.startswith("EfficientNMS")]
    out_shapes = _output_shapes(path, model, image.name, in_dims, nms_nodes)
    found = f"found outputs {_describe(out_names, out_shapes)}"

    num_classes = num_candidates = top_k = None
    nms_attributes: Dict[str, Any] = {}
    if set(out_names) == set(EFFICIENT_NMS_OUTPUTS) and len(out_names) == 4:
        layout = specs.LAYOUT_EFFICIENT_NMS
        shapes = dict(zip(out_names, out_shapes))
        dtypes = {o.name: _dtype(o) for o in graph.output}
        boxes = shapes["det_boxes"]
        if boxes is None or len(boxes) != 3 or boxes[2] != 4 or dtypes["num_dets"] != "INT32":
            raise OnnxImportError(f"{path}: EfficientNMS outputs of unexpected shape or type: {found} "
                                  f"(num_dets {dtypes['num_dets']}); expected num_dets INT32 [B, 1], "
                                  "det_boxes [B, topk, 4], det_scores [B, topk], det_classes INT32 [B, topk]")
        top_k = _size(boxes[1])
        if nms_nodes:
            nms_attributes = _attributes(nms_nodes[0])
            scores = _nms_scores_shape(model, nms_nodes[0])
            if scores is not None and len(scores) == 3:
                num_candidates, num_classes = _size(scores[1]), _size(scores[2])
    elif len(out_names) == 1 and out_shapes[0] is not None and len(out_shapes[0]) == 3 and (
            _size(out_shapes[0][2]) or 0) > 5:
        layout = specs.LAYOUT_RAW_GRID
        _, k, no = out_shapes[0]
        num_candidates, num_classes = _size(k), no - 5
    else:
        hint = ""
        if len(out_names) == 1 and out_shapes[0] is not None and len(out_shapes[0]) == 2 and out_shapes[0][-1] == 7:
            hint = (" This is export.py --end2end --max-wh: NMS inside the graph (onnxruntime's NonMaxSuppression) with "
                    "thresholds fixed at export, rows [batch index, x1, y1, x2, y2, class, score]. Re-export with "
                    "`python export.py --weights X.pt --grid` (add --dynamic-batch to batch requests), without "
                    "--end2end: the server does NMS, with thresholds per request.")
        elif len(out_names) > 1 and any(len(s or ()) == 5 for s in out_shapes):
            hint = (" Per-level [B, 3, ny, nx, 5 + nc] outputs are what export.py writes without --grid: "
                    "re-export with --grid.")
        raise OnnxImportError(f"{path}: unrecognised detector outputs: {found}. Supported layouts: "
                              f"{SUPPORTED_LAYOUTS_TEXT}.{hint}")
    batch = _size(in_dims[0])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return OnnxInfo(
        path=path, input_name=image.name, input_size=input_size, batch=batch, input_dtype=_dtype(image),
        layout=layout, num_classes=num_classes, num_candidates=num_candidates, top_k=top_k,
        output_names=out_names, output_shapes=out_shapes, custom_ops=custom_ops,
        custom_op_domains=custom_op_domains, nms_attributes=nms_attributes,
        metadata={p.key: p.value for p in model.metadata_props}, opset=opset)


def check_for_runtime(info: OnnxInfo, runtime: str) -> None:
    """Raise :class:`OnnxImportError` if ``runtime`` cannot run this ONNX.

    ``onnxruntime`` (our CPU detector) cannot run TensorRT plugin ops such as ``EfficientNMS_TRT`` (the
    ``--end2end`` export), nor custom ops of domains it does not implement. ``tensorrt`` runs standard ops and its
    plugin ops (EfficientNMS_TRT is in TensorRT's own plugin library).
    """
    if runtime not in RUNTIMES:
        raise OnnxImportError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        trt = info.tensorrt_only_ops
        if trt:
            raise OnnxImportError(
                f"{info.path}: its NMS is baked into the graph as {', '.join(trt)} (export.py --end2end or "
                "--include-nms), a TensorRT plugin that onnxruntime cannot run. Either build it for TensorRT: `make "
                "serve RUNTIME=tensorrt ONNX_<model>=<this file>` where TensorRT runs (NVIDIA's NGC containers, "
                "docs/tensorrt.md); or re-export it for this runtime without the NMS: `python export.py --weights "
                "<model>.pt --grid --dynamic-batch` (the server then does the NMS, with thresholds per request)")
        unknown = sorted({f"{d}::{op}" for d, op in info.custom_op_domains if d not in ONNXRUNTIME_DOMAINS})
        if unknown:
            raise OnnxImportError(f"{info.path}: uses custom op(s) {', '.join(unknown)} that onnxruntime does not "
                                  "implement; re-export with standard ONNX ops only")


def spec_for_onnx(base_spec: specs.ModelSpec, info: OnnxInfo,
                  labels: Optional[Sequence[str]] = None) -> specs.ModelSpec:
    """``base_spec`` adapted to the ONNX file: input size, layout, ``nms_top_k``, and labels.

    * the input size is the file's (the spec's when the file has dynamic height/width); a file of a fixed size
      keeps the fixed square even where rectangular inference was asked for;
    * a raw grid's K must equal what the spec's strides and anchors give at that size;
    * if the file detects another number of classes than ``base_spec`` has labels, ``labels`` (one name per class)
      must be given; given labels must match the file's class count where the file says it;
    * a file with a fixed batch of 1 (export.py without ``--dynamic-batch``) gets ``max_batch_size`` 1 and no
      preferred batch sizes; another fixed batch cannot be served with dynamic batching and is refused;
    * the tensor names must be the ones the configs use (``images``; ``output`` or the four EfficientNMS names).
    """
    where = f"{info.path} (model {base_spec.name})"
    if info.input_name != specs.DETECTOR_INPUT:
        raise OnnxImportError(f"{where}: input is named {info.input_name!r}, the configs expect "
                              f"{specs.DETECTOR_INPUT!r} (official export.py names it so; rename the input)")
    if info.input_dtype != "FLOAT":
        raise OnnxImportError(f"{where}: input is {info.input_dtype}; the preprocess sends FP32 images")
    changes: Dict[str, Any] = {"layout": info.layout}
    if info.input_size is not None:
        changes.update(input_size=info.input_size, rect=False)
    if info.top_k is not None:
        changes["nms_top_k"] = info.top_k
    if labels is not None:
        labels = tuple(str(x) for x in labels)
        if info.num_classes is not None and len(labels) != info.num_classes:
            raise OnnxImportError(f"{where}: {len(labels)} labels given, the ONNX detects {info.num_classes} classes")
        changes["labels"] = labels
    elif info.num_classes is not None and info.num_classes != base_spec.num_classes:
        raise OnnxImportError(
            f"{where}: the ONNX detects {info.num_classes} classes, spec {base_spec.name} has "
            f"{base_spec.num_classes} labels; pass labels=[...] with one name per class")
    if info.batch is not None:
        if info.batch != 1:
            raise OnnxImportError(f"{where}: fixed batch size {info.batch}; re-export with export.py "
                                  "--dynamic-batch (or batch 1)")
        changes.update(max_batch_size=1, preferred_batch_sizes=())
    spec = base_spec.with_overrides(**changes)
    if info.layout == specs.LAYOUT_RAW_GRID and info.num_candidates is not None \
            and info.num_candidates != spec.num_candidates:
        raise OnnxImportError(
            f"{where}: the ONNX has K={info.num_candidates} candidate rows, spec {spec.name} at "
            f"{spec.input_size[0]}x{spec.input_size[1]} gives {spec.num_candidates} ({spec.anchors_per_level} anchors "
            f"at strides {', '.join(map(str, spec.strides))}): another model family or input size?")
    expected = tuple(t.name for t in layouts.detector_outputs(spec))
    if tuple(sorted(info.output_names)) != tuple(sorted(expected)):
        raise OnnxImportError(f"{where}: outputs {', '.join(info.output_names)}; the configs of layout "
                              f"{spec.layout!r} expect {', '.join(expected)}")
    return spec

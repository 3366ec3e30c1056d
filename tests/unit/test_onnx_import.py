"""Bring-your-own ONNX (yolo_triton.models.onnx_import) on files in the official export.py layouts.

* raw grid (``export.py --grid``): a real export of our (small) yolov7-tiny with a fixed batch of 1, as export.py
  writes it without ``--dynamic-batch``, and a hand-built graph with a dynamic batch;
* end2end (``--grid --end2end``): hand-built graphs ending in an ``EfficientNMS_TRT`` node in domain ``TRT`` with the
  attributes of the official models/experimental.py ``TRT_NMS`` (background_class and box_coding as 1-element int
  lists, as its ``ONNX_TRT`` passes tuples), outputs re-dimensioned with ``dim_param`` strings as export.py does;
  and the ``--include-nms`` / add_nms.py form (default domain, plain int attributes);
* junk: outputs of no supported layout.
"""
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper


from yolo_triton import layouts, specs
from yolo_triton.models import yolov7
from yolo_triton.models.onnx_import import OnnxImportError, check_for_runtime, inspect_onnx, spec_for_onnx

SIZE = 64  # input 64x64 at strides 8/16/32: K = 3 * (8*8 + 4*4 + 2*2) = 252
K = 252


def _candidates_graph(k=K, nc=80, batch=1, size=SIZE):
    """images -> raw [B, k, 5 + nc] (a constant plus the image mean): nodes, initializers, the raw tensor name."""
    raw_const = helper.make_tensor("raw_const", TensorProto.FLOAT, [1, k, 5 + nc],
                                   np.random.default_rng(0).random((1, k, 5 + nc)).astype(np.float32).ravel())
    shape = helper.make_tensor("mean_shape", TensorProto.INT64, [3], [-1, 1, 1])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "mean_shape"], ["mean3"]),
        helper.make_node("Add", ["raw_const", "mean3"], ["raw"]),
    ]
    return nodes, [raw_const, shape], "raw"


def _image_input(batch, size=SIZE, name="images"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 3, size, size])


def _save(model, path):
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def raw_grid_onnx(path, k=K, nc=80, batch="batch", output="output", input_name="images"):
    nodes, inits, raw = _candidates_graph(k, nc)
    if input_name != "images":
        nodes[0].input[0] = input_name
    nodes.append(helper.make_node("Identity", [raw], [output]))
    graph = helper.make_graph(nodes, "raw_grid", [_image_input(batch, name=input_name)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, k, 5 + nc])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), path)


def end2end_onnx(path, domain="TRT", topk=100, batch=1, nc=80, official_attrs=True):
    """export.py --grid --end2end (domain "TRT", torch.onnx's g.op("TRT::EfficientNMS_TRT")) or the add_nms.py form
    (domain "")."""
    nodes, inits, raw = _candidates_graph(nc=nc)
    starts = {"b": 0, "c": 4, "s": 5}
    ends = {"b": 4, "c": 5, "s": 5 + nc}
    for key, name in (("b", "boxes"), ("c", "conf"), ("s", "cls")):
        inits += [helper.make_tensor(f"{key}_start", TensorProto.INT64, [1], [starts[key]]),
                  helper.make_tensor(f"{key}_end", TensorProto.INT64, [1], [ends[key]])]
        nodes.append(helper.make_node("Slice", [raw, f"{key}_start", f"{key}_end", "axis2"], [name]))
    inits.append(helper.make_tensor("axis2", TensorProto.INT64, [1], [2]))
    nodes.append(helper.make_node("Mul", ["cls", "conf"], ["scores"]))
    if official_attrs:  # models/experimental.py TRT_NMS via ONNX_TRT (tuples for background_class, box_coding)
        attrs = dict(background_class=[-1], box_coding=[1], iou_threshold=0.45, max_output_boxes=topk,
                     plugin_version="1", score_activation=0, score_threshold=0.25)
    else:  # utils/add_nms.py RegisterNMS
        attrs = dict(plugin_version="1", background_class=-1, max_output_boxes=topk, score_threshold=0.25,
                     iou_threshold=0.45, score_activation=0, box_coding=0)
    nodes.append(helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                                  ["num_dets", "det_boxes", "det_scores", "det_classes"], domain=domain, **attrs))
    # export.py: "for j in i.type.tensor_type.shape.dim: j.dim_param = str(shapes.pop(0))"
    b = str(batch)
    outputs = [
        helper.make_tensor_value_info("num_dets", TensorProto.INT32, [b, "1"]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [b, str(topk), "4"]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [b, str(topk)]),
        helper.make_tensor_value_info("det_classes", TensorProto.INT32, [b, str(topk)]),
    ]
    graph = helper.make_graph(nodes, "end2end", [_image_input(batch if isinstance(batch, int) else b)], outputs, inits)
    opsets = [helper.make_opsetid("", 12)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return _save(helper.make_model(graph, opset_imports=opsets), path)


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    """Our yolov7-tiny (narrow, 64x64), exported like export.py --grid without --dynamic-batch: batch fixed at 1."""
    spec = specs.YOLOV7_TINY.with_overrides(input_size=(SIZE, SIZE), width_multiple=0.25)
    model = yolov7.init_random_weights(yolov7.build_model(spec), seed=0).eval().fuse()
    path = tmp_path_factory.mktemp("onnx") / "yolov7-tiny.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=12,
                          input_names=["images"], output_names=["output"])
    return path


def test_raw_grid_fixed_batch_export(exported_tiny):
    info = inspect_onnx(exported_tiny)
    assert info.layout == specs.LAYOUT_RAW_GRID
    assert info.input_name == "images" and info.input_size == (SIZE, SIZE) and info.batch == 1
    assert info.num_classes == 80 and info.num_candidates == K and info.top_k is None
    assert info.output_names == ("output",) and info.output_shapes == ((1, K, 85),)
    assert info.custom_ops == () and info.opset == 12
    check_for_runtime(info, "onnxruntime")
    check_for_runtime(info, "tensorrt")

    spec = spec_for_onnx(specs.YOLOV7_TINY, info)
    assert spec.input_size == (SIZE, SIZE) and spec.layout == specs.LAYOUT_RAW_GRID
    assert spec.num_candidates == K and spec.labels == specs.YOLOV7_TINY.labels
    assert spec.max_batch_size == 1 and spec.preferred_batch_sizes == ()  # fixed batch 1: no dynamic batching

    import onnxruntime as ort

    (out,) = ort.InferenceSession(str(exported_tiny), providers=["CPUExecutionProvider"]).run(
        None, {"images": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    assert out.shape == (1, K, 85)


def test_raw_grid_dynamic_batch_and_other_class_counts(tmp_path):
    info = inspect_onnx(raw_grid_onnx(tmp_path / "dyn.onnx"))
    assert info.batch is None and info.output_shapes == (("batch", K, 85),)
    spec = spec_for_onnx(specs.YOLOV7, info)
    assert spec.max_batch_size == specs.YOLOV7.max_batch_size and spec.input_size == (SIZE, SIZE)

    three = inspect_onnx(raw_grid_onnx(tmp_path / "nc3.onnx", nc=3))
    assert three.num_classes == 3
    with pytest.raises(OnnxImportError, match="detects 3 classes, spec yolov7 has 80 labels; pass labels"):
        spec_for_onnx(specs.YOLOV7, three)
    assert spec_for_onnx(specs.YOLOV7, three, labels=["cat", "dog", "bird"]).labels == ("cat", "dog", "bird")
    with pytest.raises(OnnxImportError, match="2 labels given, the ONNX detects 3"):
        spec_for_onnx(specs.YOLOV7, three, labels=["cat", "dog"])

    # K must be what the spec's anchors and strides give at the file's input size
    odd = inspect_onnx(raw_grid_onnx(tmp_path / "k.onnx", k=200))
    with pytest.raises(OnnxImportError, match="K=200 candidate rows.*gives 252"):
        spec_for_onnx(specs.YOLOV7, odd)
    # names the configs use: an older export.py named the input "input"
    old = inspect_onnx(raw_grid_onnx(tmp_path / "old.onnx", input_name="input"))
    with pytest.raises(OnnxImportError, match="input is named 'input'.*'images'"):
        spec_for_onnx(specs.YOLOV7, old)
    other = inspect_onnx(raw_grid_onnx(tmp_path / "out0.onnx", output="output0"))
    with pytest.raises(OnnxImportError, match="outputs output0; .* expect output"):
        spec_for_onnx(specs.YOLOV7, other)


def test_end2end_trt_nms(tmp_path):
    path = end2end_onnx(tmp_path / "e2e.onnx")
    info = inspect_onnx(path)
    assert info.layout == specs.LAYOUT_EFFICIENT_NMS
    assert info.batch == 1 and info.top_k == 100 and info.input_size == (SIZE, SIZE)
    assert info.num_classes == 80 and info.num_candidates == K  # from shape inference of the NMS scores input
    assert info.output_shapes == ((1, 1), (1, 100, 4), (1, 100), (1, 100))  # dim_param "1"/"100" read as sizes
    assert info.custom_ops == ("EfficientNMS_TRT",) and info.custom_op_domains == (("TRT", "EfficientNMS_TRT"),)
    assert info.tensorrt_only_ops == ("EfficientNMS_TRT",)
    assert info.nms_attributes["iou_threshold"] == pytest.approx(0.45)
    assert info.nms_attributes["background_class"] == [-1] and info.nms_attributes["plugin_version"] == "1"

    with pytest.raises(OnnxImportError, match="EfficientNMS_TRT.*RUNTIME=tensorrt"):
        check_for_runtime(info, "onnxruntime")
    check_for_runtime(info, "tensorrt")
    with pytest.raises(OnnxImportError, match="unknown runtime"):
        check_for_runtime(info, "openvino")
    # the claim is true: onnxruntime cannot even load it
    import onnxruntime as ort

    with pytest.raises(Exception, match="EfficientNMS_TRT"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    spec = spec_for_onnx(specs.YOLOV7, info)
    assert spec.layout == specs.LAYOUT_EFFICIENT_NMS and spec.nms_top_k == 100 and spec.input_size == (SIZE, SIZE)
    assert [t.dims for t in layouts.detector_outputs(spec)] == [(1,), (100, 4), (100,), (100,)]


def test_end2end_default_domain_dynamic_batch(tmp_path):
    """utils/add_nms.py (export.py --include-nms): the node in the default domain; --dynamic-batch: "batch"."""
    info = inspect_onnx(end2end_onnx(tmp_path / "gs.onnx", domain="", topk=50, batch="batch",
                                     official_attrs=False))
    assert info.layout == specs.LAYOUT_EFFICIENT_NMS and info.batch is None and info.top_k == 50
    assert info.custom_op_domains == (("", "EfficientNMS_TRT"),) and info.tensorrt_only_ops == ("EfficientNMS_TRT",)
    with pytest.raises(OnnxImportError, match="RUNTIME=tensorrt"):
        check_for_runtime(info, "onnxruntime")
    spec = spec_for_onnx(specs.YOLOV7, info)
    assert spec.nms_top_k == 50 and spec.max_batch_size == specs.YOLOV7.max_batch_size


def test_unrecognised_outputs_are_refused_clearly(tmp_path):
    nodes, inits, raw = _candidates_graph()
    nodes += [helper.make_node("ReduceMax", [raw], ["a"], axes=[2], keepdims=0),
              helper.make_node("ReduceMin", [raw], ["b"], axes=[1], keepdims=0)]
    outputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, K]),
               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 85])]
    junk = _save(helper.make_model(helper.make_graph(nodes, "junk", [_image_input(1)], outputs, inits),
                                   opset_imports=[helper.make_opsetid("", 12)]), tmp_path / "junk.onnx")
    with pytest.raises(OnnxImportError) as e:
        inspect_onnx(junk)
    message = str(e.value)
    assert "unrecognised detector outputs" in message and f"a [1, {K}], b [1, 85]" in message
    assert "raw_grid" in message and "efficient_nms" in message and "num_dets" in message

    # export.py --end2end --max-wh (onnxruntime NMS): [N, 7]
    nodes, inits, raw = _candidates_graph()
    nodes.append(helper.make_node("Slice", [raw, "s0", "s7", "ax"], ["rows"]))
    inits += [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s0", 0), ("s7", 7), ("ax", 2))]
    nodes.append(helper.make_node("Squeeze", ["rows", "sq"], ["output"]))
    inits.append(helper.make_tensor("sq", TensorProto.INT64, [1], [0]))
    ort_nms = _save(helper.make_model(helper.make_graph(
        nodes, "ort_nms", [_image_input(1)], [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 7])],
        inits), opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "ort_nms.onnx")
    with pytest.raises(OnnxImportError, match="--max-wh"):
        inspect_onnx(ort_nms)

    # not an image input
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["output"])], "vec",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])])
    with pytest.raises(OnnxImportError, match=r"not an image batch \[B, 3, H, W\]"):
        inspect_onnx(_save(helper.make_model(graph), tmp_path / "vec.onnx"))
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(OnnxImportError, match="not a readable ONNX"):
        inspect_onnx(tmp_path / "garbage.onnx")

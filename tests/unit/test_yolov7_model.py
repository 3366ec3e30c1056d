"""Our PyTorch YOLOv7 (yolo_triton.models.yolov7) and its ONNX export (build/create_onnx.py).

Most tests use a small variant (128×160 input, width 0.25) so that the file runs in well under a minute on two
CPU cores; only the structure/parameter-count test builds the full-size network (no forward pass).
"""
import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
import torch


from yolo_triton import specs

from yolo_triton.models.yolov7_layers import LAYER_TABLES
from yolo_triton.models import yolov7
from yolo_triton.models.checkpoint import CheckpointError


from build import create_onnx

from ..helpers import ROOT

SMALL = specs.YOLOV7.with_overrides(input_size=(128, 160), width_multiple=0.25)

# Parameter counts of the full-size YOLOv7 (width 1.0, 80 classes), measured on this implementation.
# Fused: exactly the official deploy figure ("Model Summary: 306 layers, 36905341 parameters" printed by the
# official detect.py/test.py after fusing yolov7.pt; README: 36.9M). That is the check that the layer table,
# the channel arithmetic and the head are the official ones.
# Unfused (training form, before fuse): the fused count plus the BN affine parameters, the RepConv 1×1 branch
# kernels and the ImplicitA/M vectors, minus the conv biases that folding creates; the test recomputes that
# decomposition rather than trusting a second magic number.
FUSED_PARAMS_OFFICIAL = 36_905_341
UNFUSED_PARAMS = 37_622_682


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def small_model():
    """A seeded random small model (unfused, eval mode); tests must not modify it."""
    model = yolov7.build_model(SMALL)
    yolov7.init_random_weights(model, seed=0)
    return model.eval()


def _images(n, size=SMALL.input_size, seed=0):
    """Image-like inputs: smooth colour fields with a bit of pixel noise, in 0..1."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand(n, 3, h // 16, w // 16, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.85 * smooth + 0.15 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------------------------


def test_full_model_official_keys_and_parameter_count():
    model = yolov7.build_model(specs.YOLOV7)
    state = model.state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    assert tuple(state["model.0.conv.weight"].shape) == (32, 3, 3, 3)
    for name in bn:
        assert f"model.0.bn.{name}" in state
    assert "model.0.conv.bias" not in state
    for j in range(1, 8):
        assert f"model.51.cv{j}.conv.weight" in state and f"model.51.cv{j}.bn.running_var" in state
    assert tuple(state["model.51.cv1.conv.weight"].shape) == (512, 1024, 1, 1)
    assert tuple(state["model.51.cv7.conv.weight"].shape) == (512, 1024, 1, 1)
    assert tuple(state["model.102.rbr_dense.0.weight"].shape) == (256, 128, 3, 3)
    assert tuple(state["model.102.rbr_1x1.0.weight"].shape) == (256, 128, 1, 1)
    for branch in ("rbr_dense", "rbr_1x1"):
        for name in bn:
            assert f"model.102.{branch}.1.{name}" in state
    assert not any(k.startswith("model.102.rbr_identity") for k in state)  # c1 (128) != c2 (256)

    det = "model.105"
    for i, c in enumerate((256, 512, 1024)):
        assert tuple(state[f"{det}.m.{i}.weight"].shape) == (255, c, 1, 1)
        assert tuple(state[f"{det}.m.{i}.bias"].shape) == (255,)
        assert tuple(state[f"{det}.ia.{i}.implicit"].shape) == (1, c, 1, 1)
        assert tuple(state[f"{det}.im.{i}.implicit"].shape) == (1, 255, 1, 1)
    assert tuple(state[f"{det}.anchors"].shape) == (3, 3, 2)
    assert tuple(state[f"{det}.anchor_grid"].shape) == (3, 1, 3, 1, 1, 2)
    pixels = torch.tensor(specs.YOLOV7.anchors, dtype=torch.float32).reshape(3, 3, 2)
    strides = torch.tensor(specs.YOLOV7.strides, dtype=torch.float32).reshape(3, 1, 1)
    torch.testing.assert_close(state[f"{det}.anchors"], pixels / strides)  # stride units
    torch.testing.assert_close(state[f"{det}.anchor_grid"], pixels.reshape(3, 1, 3, 1, 1, 2))  # pixels
    with_state = {i for i, (_, name, _) in enumerate(LAYER_TABLES["yolov7"]) if name not in ("Concat", "MP", "Upsample")}
    assert {int(k.split(".")[1]) for k in state} == with_state

    unfused = _count(model)
    assert unfused == UNFUSED_PARAMS
    bn_affine = sum(m.weight.numel() + m.bias.numel() for m in model.modules()
                    if isinstance(m, torch.nn.BatchNorm2d))
    rep_1x1 = sum(m.rbr_1x1[0].weight.numel() for m in model.modules() if isinstance(m, yolov7.RepConv))
    implicit = sum(p.numel() for k, p in model.named_parameters() if ".ia." in k or ".im." in k)
    conv_biases = sum(m.conv.out_channels for m in model.modules() if isinstance(m, yolov7.Conv))
    rep_biases = sum(m.rbr_dense[0].out_channels for m in model.modules() if isinstance(m, yolov7.RepConv))

    model.eval().fuse()
    fused = _count(model)
    assert fused == FUSED_PARAMS_OFFICIAL
    assert abs(fused - 36.9e6) < 0.1e6
    assert unfused == fused + bn_affine + rep_1x1 + implicit - conv_biases - rep_biases


def test_width_multiple_channels():
    model = yolov7.build_model(SMALL)
    state = model.state_dict()
    assert yolov7.make_divisible(32 * 0.25) == 8 and yolov7.make_divisible(12.5) == 16
    assert tuple(state["model.0.conv.weight"].shape) == (8, 3, 3, 3)
    assert tuple(state["model.51.cv7.conv.weight"].shape) == (128, 256, 1, 1)
    assert [tuple(state[f"model.105.m.{i}.weight"].shape[:2]) for i in range(3)] == [(255, 64), (255, 128),
                                                                                      (255, 256)]
    for i, m in enumerate(model.model):
        assert m.i == i and m.f == LAYER_TABLES["yolov7"][i][0]
    # official initialize_weights() sets every BN to eps 1e-3 (not in the state dict, but it matters for inference)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_repconv_identity_branch_fuses():
    torch.manual_seed(0)
    block = yolov7.RepConv(16, 16)
    assert isinstance(block.rbr_identity, torch.nn.BatchNorm2d)
    for bn in (block.rbr_dense[1], block.rbr_1x1[1], block.rbr_identity):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.3)
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    block.eval()
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        expected = block(x)
        block.fuse()
        got = block(x)
    assert hasattr(block, "rbr_reparam") and not hasattr(block, "rbr_dense")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Forward, fuse, decode
# ----------------------------------------------------------------------------------------------------------------


def test_output_shape_non_square_batch_2(small_model):
    with torch.no_grad():
        y = small_model(_images(2))
    assert SMALL.num_candidates == 3 * (16 * 20 + 8 * 10 + 4 * 5)
    assert tuple(y.shape) == (2, SMALL.num_candidates, 85)
    assert torch.isfinite(y).all()
    assert ((y[..., 4:] > 0) & (y[..., 4:] < 1)).all()
    assert (y[..., 2:4] > 0).all() and (y[..., 2:4] <= 4 * 459 + 1e-3).all()


def test_grid_follows_the_actual_input_size(small_model):
    with torch.no_grad():
        y = small_model(_images(1, size=(96, 224)))
    assert tuple(y.shape) == (1, 3 * (12 * 28 + 6 * 14 + 3 * 7), 85)
    # P3 cell centres span the whole (wider) image
    assert y[0, : 3 * 12 * 28, 0].max() > 200


def test_random_weights_are_sane(small_model):
    bns = [m for m in small_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.running_mean.abs().max() > 0 for m in bns)  # non-trivial: BN folding is really exercised
    assert all((m.running_var - 1).abs().max() > 1e-3 for m in bns)
    inputs = [_images(2, seed=5), torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(6)),
              torch.full((1, 3, 128, 160), 114 / 255)]
    for x in inputs:
        with torch.no_grad():
            y = small_model(x)
        obj = y[..., 4]
        score = obj * y[..., 5:].max(-1).values
        # few confident boxes, not thousands (head priors as the official _initialize_biases)
        assert (score > SMALL.conf_threshold).sum(1).max() < 0.05 * SMALL.num_candidates
        # not saturated: objectness spreads over the open interval, xy offsets vary within cells
        assert ((obj > 1e-4) & (obj < 1 - 1e-4)).float().mean() > 0.5
        assert y[..., 2:4].std() > 1.0
    with torch.no_grad():
        a, b = small_model(_images(2, seed=7))
    assert (a[:, 4] - b[:, 4]).abs().max() > 1e-3  # the output depends on the image


def test_fuse_matches_unfused(small_model):
    fused = yolov7.build_model(SMALL)
    fused.load_state_dict(small_model.state_dict())
    fused.eval().fuse()
    assert fused.is_fused
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, yolov7.ImplicitA, yolov7.ImplicitM))
                   for m in fused.modules())
    assert all(hasattr(m, "rbr_reparam") for m in fused.modules() if isinstance(m, yolov7.RepConv))
    assert _count(fused) < _count(small_model)
    x = _images(2, seed=1)
    with torch.no_grad():
        expected = small_model(x)
        got = fused(x)
    box_scale = expected[..., :4].abs().max().item()
    assert (got[..., :4] - expected[..., :4]).abs().max().item() <= 1e-4 * box_scale
    assert (got[..., 4:] - expected[..., 4:]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fuse", [False, True])
def test_decode_matches_independent_numpy_decode(small_model, fuse):
    model = small_model
    if fuse:
        model = yolov7.build_model(SMALL)
        model.load_state_dict(small_model.state_dict())
        model.eval().fuse()
    det = model.model[-1]
    # The raw head output of level i: after ImplicitM (unfused) or of the fused conv.
    taps = det.m if fuse else det.im
    raw = {}
    handles = [t.register_forward_hook(lambda mod, inp, out, i=i: raw.__setitem__(i, out.numpy().copy()))
               for i, t in enumerate(taps)]
    try:
        with torch.no_grad():
            y = model(_images(2, seed=2)).numpy()
    finally:
        for h in handles:
            h.remove()

    na, no = SMALL.anchors_per_level, SMALL.num_outputs
    decoded = []
    for i, stride in enumerate(SMALL.strides):
        r = raw[i]
        n, _, ny, nx = r.shape
        assert (ny, nx) == (SMALL.input_size[0] // stride, SMALL.input_size[1] // stride)
        p = 1.0 / (1.0 + np.exp(-r.astype(np.float64)))
        p = p.reshape(n, na, no, ny, nx).transpose(0, 1, 3, 4, 2)  # n, anchor, row, column, value
        cols, rows = np.meshgrid(np.arange(nx), np.arange(ny))
        anchors = np.asarray(SMALL.anchors[i], dtype=np.float64).reshape(na, 2)  # pixels
        out = p.copy()
        out[..., 0] = (p[..., 0] * 2 - 0.5 + cols) * stride
        out[..., 1] = (p[..., 1] * 2 - 0.5 + rows) * stride
        out[..., 2] = (p[..., 2] * 2) ** 2 * anchors[:, 0].reshape(1, na, 1, 1)
        out[..., 3] = (p[..., 3] * 2) ** 2 * anchors[:, 1].reshape(1, na, 1, 1)
        decoded.append(out.reshape(n, -1, no))
    decoded = np.concatenate(decoded, 1)
    assert decoded.shape == y.shape
    np.testing.assert_allclose(y[..., :4], decoded[..., :4], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(y[..., 4:], decoded[..., 4:], rtol=1e-5, atol=1e-6)
    # spot check the order level -> anchor -> row -> column: P3, anchor 1, row 2, column 3
    k = 1 * 16 * 20 + 2 * 20 + 3
    assert abs(y[0, k, 0] - (decoded[0, k, 0])) < 1e-3 and 3 * 8 - 4 <= y[0, k, 0] <= 3 * 8 + 12


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def test_seeded_init_is_deterministic():
    def weights(seed):
        model = yolov7.build_model(SMALL)
        yolov7.init_random_weights(model, seed)
        return model.state_dict()

    a, b, c = weights(7), weights(7), weights(8)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    float_keys = [k for k in a if a[k].is_floating_point() and "anchor" not in k]
    assert all(not torch.equal(a[k], c[k]) for k in float_keys)


def test_random_weights_log_a_loud_warning(caplog):
    model = yolov7.build_model(SMALL)
    with caplog.at_level(logging.WARNING, logger="yolo_triton"):
        yolov7.init_random_weights(model, 0)
    records = [r for r in caplog.records if r.name == "yolo_triton" and r.levelno == logging.WARNING]
    assert any("RANDOM WEIGHTS: boxes from this model are meaningless" in r.getMessage() for r in records)


def test_load_weights_round_trip_and_refusals(small_model, tmp_path):
    path = tmp_path / "state.pt"
    yolov7.save_weights(small_model, path)
    model = yolov7.load_weights(yolov7.build_model(SMALL), path)
    assert all(torch.equal(v, small_model.state_dict()[k]) for k, v in model.state_dict().items())

    # a fused state dict is accepted: the model is fused first
    fused = yolov7.build_model(SMALL)
    fused.load_state_dict(small_model.state_dict())
    fused.eval().fuse()
    yolov7.save_weights(fused, tmp_path / "fused.pt")
    assert yolov7.load_weights(yolov7.build_model(SMALL), tmp_path / "fused.pt").is_fused

    # checkpoints in the official {'model': ...} form that hold something else are refused clearly
    # (real official checkpoints: tests/test_yolov7_checkpoint.py)
    torch.save({"model": torch.nn.Conv2d(3, 8, 1), "epoch": -1}, tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match="not a YOLOv7 network"):
        yolov7.load_weights(yolov7.build_model(SMALL), tmp_path / "official.pt")
    torch.save({"model": {"x": torch.zeros(1)}, "epoch": 3}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="unexpected: x"):
        yolov7.load_weights(yolov7.build_model(SMALL), tmp_path / "nested.pt")
    with pytest.raises(FileNotFoundError):
        yolov7.load_weights(yolov7.build_model(SMALL), tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------------------------


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _metadata(path):
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_onnx_export_matches_torch_with_dynamic_batch(small_model, tmp_path):
    out = create_onnx.export_onnx(SMALL, tmp_path / "yolov7.onnx", seed=0)
    assert out == tmp_path / "yolov7.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["yolov7.onnx"]  # no temp file left behind

    meta = _metadata(out)
    assert meta["model_name"] == "yolov7" and meta["layout"] == specs.LAYOUT_RAW_GRID
    assert json.loads(meta["input_size"]) == [128, 160]
    assert meta["random_weights"] == "true" and meta["seed"] == "0"
    assert int(meta["num_candidates"]) == SMALL.num_candidates

    session = _session(out)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == specs.DETECTOR_INPUT and outp.name == specs.DETECTOR_OUTPUT
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 128, 160]
    assert isinstance(outp.shape[0], str) and outp.shape[1:] == [SMALL.num_candidates, 85]

    for batch in (1, 3):
        x = _images(batch, seed=10 + batch)
        with torch.no_grad():
            expected = small_model(x).numpy()  # same seed, unfused: also checks the fused export
        (got,) = session.run(None, {specs.DETECTOR_INPUT: x.numpy()})
        assert got.shape == (batch, SMALL.num_candidates, 85)
        box_scale = np.abs(expected[..., :4]).max()
        assert np.abs(got[..., :4] - expected[..., :4]).max() <= 1e-4 * box_scale
        assert np.abs(got[..., 4:] - expected[..., 4:]).max() <= 1e-4


def test_onnx_export_with_weights_file(small_model, tmp_path):
    weights = tmp_path / "state.pt"
    yolov7.save_weights(small_model, weights)
    out = create_onnx.export_onnx(SMALL, tmp_path / "sub" / "m.onnx", weights=weights)
    meta = _metadata(out)
    assert meta["random_weights"] == "false" and meta["seed"] == "" and meta["weights"] == "state.pt"
    assert len(meta["weights_sha256"]) == 64
    x = _images(2, seed=20)
    with torch.no_grad():
        expected = small_model(x).numpy()
    (got,) = _session(out).run(None, {specs.DETECTOR_INPUT: x.numpy()})
    assert np.abs(got[..., 4:] - expected[..., 4:]).max() <= 1e-4


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(create_onnx.onnx.checker, "check_model", boom)
    with pytest.raises(RuntimeError, match="export failed"):
        create_onnx.export_onnx(SMALL, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_runs_as_a_script(tmp_path):
    out = tmp_path / "cli.onnx"
    cmd = [sys.executable, "-m", "build.create_onnx", "--model", "yolov7", "--seed", "4", "--img-size", "64", "96",
           "--width-multiple", "0.125", "--output", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stderr
    meta = _metadata(out)
    assert json.loads(meta["input_size"]) == [64, 96] and meta["seed"] == "4"
    assert math.isclose(float(meta["width_multiple"]), 0.125)

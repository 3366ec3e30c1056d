"""yolov7-tiny's architecture, and official YOLOv7 ``.pt`` checkpoints read without the official code (the
checkpoints are made as the official code saves them: tests/official_format.py)."""
import copy
import logging
import pickle

import numpy as np
import pytest
import torch
from torch import nn


from yolo_triton import specs
from yolo_triton.models.yolov7_layers import LAYER_TABLES
from yolo_triton.models import checkpoint, yolov7

from ..official_format import (_count, official_fuse, official_model,
                               save_official)

SMALL_V7 = specs.YOLOV7.with_overrides(input_size=(128, 160), width_multiple=0.25)
TINY = specs.YOLOV7_TINY.with_overrides(input_size=(160, 160))


def _images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand(n, 3, h // 16, w // 16, generator=g)
    smooth = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.85 * smooth + 0.15 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# yolov7-tiny architecture
# ----------------------------------------------------------------------------------------------------------------

# Fused: the official deploy figure of yolov7-tiny (README "6.2M"; "6219709 parameters" in the official fused model
# summary). Unfused (training form, IDetect head): adds BN affine and ImplicitA/M, drops the fused conv biases.
TINY_FUSED_PARAMS = 6_219_709
# Published in WongKinYiu/yolov7 issue #958 for yolov7-tiny.yaml with a Detect head and 4 classes (training form):
# "Model Summary: 255 layers, 6022129 parameters". Reproduced below with nc=4 and no ImplicitA/M.
TINY_DETECT_NC4_PARAMS = 6_022_129


def test_tiny_official_keys_and_parameter_counts():
    model = yolov7.build_model(specs.YOLOV7_TINY)
    assert len(model.model) == 78 and len(LAYER_TABLES["yolov7-tiny"]) == 78
    state = model.state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    convs = [i for i, (_, name, _) in enumerate(LAYER_TABLES["yolov7-tiny"]) if name == "Conv"]
    expected = {f"model.{i}.conv.weight" for i in convs} | {f"model.{i}.bn.{b}" for i in convs for b in bn}
    expected |= {f"model.77.{k}" for k in ("anchors", "anchor_grid")}
    expected |= {f"model.77.{p}.{j}.{t}" for j in range(3) for p, t in (("m", "weight"), ("m", "bias"))}
    expected |= {f"model.77.{p}.{j}.implicit" for j in range(3) for p in ("ia", "im")}
    assert set(state) == expected
    # layers without parameters: MP 8/15/22, SP 31-33, Concat, Upsample 39/49
    assert {type(model.model[i]).__name__ for i in (8, 15, 22)} == {"MP"}
    assert [model.model[i].m.kernel_size for i in (31, 32, 33)] == [5, 9, 13]
    assert all(isinstance(model.model[i], nn.Upsample) for i in (39, 49))
    # LeakyReLU(0.1) everywhere, channel widths of the yaml
    acts = {type(m.act).__name__ for m in model.model if isinstance(m, yolov7.Conv)}
    assert acts == {"LeakyReLU"} and model.model[0].act.negative_slope == 0.1
    assert state["model.0.conv.weight"].shape == (32, 3, 3, 3)
    assert state["model.28.conv.weight"].shape == (512, 1024, 1, 1)  # Concat of 4 x 256
    assert state["model.77.m.2.weight"].shape == (255, 512, 1, 1)
    assert state["model.77.ia.0.implicit"].shape == (1, 128, 1, 1)
    assert state["model.77.anchor_grid"].reshape(-1).tolist() == [float(a) for lvl in specs.YOLOV7_TINY.anchors
                                                                  for a in lvl]
    assert model.model[0].conv.stride == (2, 2) and model.model[58].conv.stride == (2, 2)

    unfused = _count(model)
    model.eval().fuse()
    assert _count(model) == TINY_FUSED_PARAMS
    det = yolov7.build_model(specs.YOLOV7_TINY).detect
    implicit = _count(det.ia) + _count(det.im)
    # unfused = fused - folded conv biases + BN weight/bias + implicit
    folded_biases = sum(m.conv.out_channels for m in yolov7.build_model(specs.YOLOV7_TINY).model
                        if isinstance(m, yolov7.Conv))
    assert unfused == TINY_FUSED_PARAMS - folded_biases + 2 * folded_biases + implicit

    four = yolov7.build_model(specs.YOLOV7_TINY.with_overrides(labels=("a", "b", "c", "d")))
    assert _count(four) - _count(four.detect.ia) - _count(four.detect.im) == TINY_DETECT_NC4_PARAMS


def test_tiny_forward_shape_and_fuse():
    model = yolov7.init_random_weights(yolov7.build_model(TINY), seed=1).eval()
    x = _images(2, TINY.input_size, seed=3)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, TINY.num_candidates, 85)
        fused = copy.deepcopy(model).fuse()
        z = fused(x)
    scale = y[..., :4].abs().max().item()
    assert (z[..., :4] - y[..., :4]).abs().max().item() <= 1e-4 * scale
    assert (z[..., 4:] - y[..., 4:]).abs().max().item() <= 1e-4


def test_activation_strings_are_parsed_not_evaluated():
    assert isinstance(yolov7.make_activation("nn.LeakyReLU(0.1)"), nn.LeakyReLU)
    assert yolov7.make_activation("LeakyReLU(0.2)").negative_slope == 0.2
    assert isinstance(yolov7.make_activation(True), nn.SiLU)
    assert isinstance(yolov7.make_activation(False), nn.Identity)
    with pytest.raises(ValueError, match="unknown activation"):
        yolov7.make_activation("__import__('os').system('true')")


# ----------------------------------------------------------------------------------------------------------------
# Official-format checkpoints: classes named and shaped as the official ones
# ----------------------------------------------------------------------------------------------------------------

def _rounded(model):
    """``model`` with every floating tensor rounded to FP16 (what an FP16 checkpoint of it holds)."""
    return copy.deepcopy(model).half().float()


def _assert_same_outputs(got, expected, atol=1e-5):
    scale = expected[..., :4].abs().max().item()
    assert (got[..., :4] - expected[..., :4]).abs().max().item() <= atol * max(scale, 1.0)
    assert (got[..., 4:] - expected[..., 4:]).abs().max().item() <= atol


@pytest.fixture(scope="module")
def v7_source():
    return _rounded(yolov7.init_random_weights(yolov7.build_model(SMALL_V7), seed=5).eval())


@pytest.fixture(scope="module")
def tiny_source():
    return _rounded(yolov7.init_random_weights(yolov7.build_model(TINY), seed=6).eval())


@pytest.mark.parametrize("which", ["yolov7", "yolov7_tiny"])
def test_official_training_checkpoint_loads_and_matches(which, v7_source, tiny_source, tmp_path):
    source = v7_source if which == "yolov7" else tiny_source
    path = save_official(official_model(source), tmp_path / f"{which}.pt", best_fitness=np.array([0.51]))

    state, info = checkpoint.load_official_checkpoint(path)
    assert info["format"] == "checkpoint" and info["source_key"] == "model" and info["epoch"] == -1
    assert info["model_class"] == "models.yolo.Model" and info["head_class"] == "models.yolo.IDetect"
    assert info["nc"] == 80 and info["names"][:2] == ["person", "bicycle"]
    assert info["num_layers"] == len(source.model) and info["stride"] == [8.0, 16.0, 32.0]
    assert info["yaml"]["anchors"] == [list(a) for a in source.spec.anchors]
    assert set(info["bn_eps"].values()) == {1e-3}
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert set(state) == set(source.state_dict())

    loaded = yolov7.load_weights(yolov7.build_model(source.spec), path).eval()
    assert not loaded.is_fused
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = _images(2, source.spec.input_size, seed=8)
    with torch.no_grad():
        _assert_same_outputs(loaded(x), source(x))
        # and after fusing, as the export does
        _assert_same_outputs(loaded.fuse()(x), source(x), atol=5e-4)


def test_official_fused_checkpoint_loads_into_a_fused_model(v7_source, tmp_path):
    """After the official Model.fuse(): Conv without bn, RepConv rbr_reparam, IDetect with ia/im folded but kept,
    ``forward = fuseforward`` bound methods (pickled as getattr(obj, 'fuseforward'))."""
    reference = _rounded(copy.deepcopy(v7_source).fuse())
    fused = official_fuse(official_model(v7_source), reference)
    path = save_official(fused, tmp_path / "fused.pt")

    state, info = checkpoint.load_official_checkpoint(path)
    assert info["head_fused"] and info["implicit_folded"]
    assert not any(".ia." in k or ".im." in k or ".bn." in k for k in state)
    assert any(k.endswith("rbr_reparam.weight") for k in state)

    loaded = yolov7.load_weights(yolov7.build_model(SMALL_V7), path).eval()
    assert loaded.is_fused and not hasattr(loaded.model[0], "bn")
    x = _images(2, SMALL_V7.input_size, seed=9)
    with torch.no_grad():
        _assert_same_outputs(loaded(x), reference(x))
        # the same network as the unfused source, up to FP16 rounding of the fused weights
        _assert_same_outputs(loaded(x), v7_source(x), atol=2e-2)


def test_fused_checkpoint_of_old_yolov7_keeps_the_head_unfolded(v7_source, tmp_path):
    reference = copy.deepcopy(v7_source)
    for m in reference.modules():
        if isinstance(m, (yolov7.Conv, yolov7.RepConv)):
            m.fuse()
    reference = _rounded(reference)
    path = save_official(official_fuse(official_model(v7_source), reference, fuse_head=False), tmp_path / "old.pt")
    state, info = checkpoint.load_official_checkpoint(path)
    assert info["head_fused"] is False and "model.105.ia.0.implicit" in state
    loaded = yolov7.load_weights(yolov7.build_model(SMALL_V7), path).eval()
    assert not loaded.detect.fused and not hasattr(loaded.model[0], "bn")
    x = _images(1, SMALL_V7.input_size, seed=2)
    with torch.no_grad():
        _assert_same_outputs(loaded(x), reference(x))
    # the same tensors as a bare state dict cannot say whether ia/im were folded: refused, not guessed
    torch.save(state, tmp_path / "ambiguous.pt")
    with pytest.raises(checkpoint.CheckpointError, match="cannot tell whether they were already folded"):
        checkpoint.load_official_checkpoint(tmp_path / "ambiguous.pt")


def test_deploy_checkpoint_with_detect_head(tiny_source, tmp_path):
    """The re-parameterisation notebook's form: Detect head (ia/im folded into m), BN and RepConv unfused."""
    path = save_official(official_model(tiny_source, head="Detect"), tmp_path / "deploy.pt")
    state, info = checkpoint.load_official_checkpoint(path)
    assert info["head_class"] == "models.yolo.Detect" and not any(".ia." in k for k in state)
    loaded = yolov7.load_weights(yolov7.build_model(TINY), path).eval()
    assert loaded.detect.fused and hasattr(loaded.model[0], "bn")
    reference = copy.deepcopy(tiny_source)
    reference.detect.fuse()
    reference = _rounded(reference)  # the folded head convs, rounded to FP16 as the checkpoint holds them
    x = _images(1, TINY.input_size, seed=4)
    with torch.no_grad():
        _assert_same_outputs(loaded(x), reference(x))
        _assert_same_outputs(loaded(x), tiny_source(x), atol=2e-2)


def test_ema_plain_state_dict_and_our_files(v7_source, tmp_path):
    # 'model' None -> 'ema'
    path = save_official(official_model(v7_source), tmp_path / "ema.pt", key="ema")
    _, info = checkpoint.load_official_checkpoint(path)
    assert info["source_key"] == "ema"
    loaded = yolov7.load_weights(yolov7.build_model(SMALL_V7), path)
    assert torch.equal(loaded.state_dict()["model.104.rbr_1x1.0.weight"],
                       v7_source.state_dict()["model.104.rbr_1x1.0.weight"])
    # a plain state dict (ours, FP16): read with weights_only, converted to float32
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in v7_source.state_dict().items()},
               tmp_path / "plain.pt")
    state, info = checkpoint.load_official_checkpoint(tmp_path / "plain.pt")
    assert info["format"] == "state_dict" and state["model.0.conv.weight"].dtype == torch.float32
    # our own fused state dict still loads (the model is fused first)
    fused = copy.deepcopy(v7_source).fuse()
    yolov7.save_weights(fused, tmp_path / "ours_fused.pt")
    assert yolov7.load_weights(yolov7.build_model(SMALL_V7), tmp_path / "ours_fused.pt").is_fused


def test_mismatches_name_keys_and_hint_the_right_model(v7_source, tiny_source, tmp_path):
    v7 = save_official(official_model(v7_source), tmp_path / "v7.pt")
    tiny = save_official(official_model(tiny_source), tmp_path / "tiny.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"yolov7-tiny checkpoint\? use --model yolov7_tiny") as e:
        yolov7.load_weights(yolov7.build_model(SMALL_V7), tiny)
    assert "missing" in str(e.value) and "model." in str(e.value)
    with pytest.raises(checkpoint.CheckpointError, match=r"yolov7 checkpoint\? use --model yolov7\b"):
        yolov7.load_weights(yolov7.build_model(TINY), v7)
    with pytest.raises(checkpoint.CheckpointError, match="width_multiple"):
        yolov7.load_weights(yolov7.build_model(SMALL_V7.with_overrides(width_multiple=0.5)), v7)
    with pytest.raises(checkpoint.CheckpointError, match="80 classes.*3 labels"):
        yolov7.load_weights(yolov7.build_model(SMALL_V7.with_overrides(labels=("a", "b", "c"))), v7)
    # a plain state dict says its class count only through the head's shape
    yolov7.save_weights(yolov7.build_model(SMALL_V7.with_overrides(labels=("a", "b", "c"))), tmp_path / "nc3.pt")
    with pytest.raises(checkpoint.CheckpointError, match="detects 3 classes, spec yolov7 has 80 labels"):
        yolov7.load_weights(yolov7.build_model(SMALL_V7), tmp_path / "nc3.pt")
    # an unfused checkpoint cannot go into an already fused model
    with pytest.raises(checkpoint.CheckpointError, match="already fused"):
        yolov7.load_weights(yolov7.build_model(SMALL_V7).eval().fuse(), v7)


def test_anchor_and_name_differences_are_logged(v7_source, tmp_path, caplog):
    model = official_model(v7_source)
    model.names = [f"class{i}" for i in range(80)]
    model.model[-1].anchor_grid.mul_(1.5)
    path = save_official(model, tmp_path / "custom.pt")
    with caplog.at_level(logging.WARNING, logger="yolo_triton"):
        loaded = yolov7.load_weights(yolov7.build_model(SMALL_V7), path)
    text = caplog.text
    assert "class names differ" in text and "anchors" in text
    assert torch.equal(loaded.detect.anchor_grid, model.model[-1].anchor_grid.half().float())


# ----------------------------------------------------------------------------------------------------------------
# Malicious pickles are refused before anything runs
# ----------------------------------------------------------------------------------------------------------------


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_payloads(marker):
    import os
    import subprocess

    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.eval": (eval, (f"open({str(marker)!r}, 'w')",)),
        "builtins.exec": (exec, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],)),
        "torch.load": (torch.load, (str(marker),)),
        "getattr on a torch function": (getattr, (torch._utils._rebuild_tensor_v2, "__globals__")),
    }


@pytest.mark.parametrize("name", list(_evil_payloads("x")))
def test_malicious_pickles_are_refused_and_not_run(name, tmp_path):
    marker = tmp_path / "pwned"
    func, args = _evil_payloads(marker)[name]
    path = tmp_path / "evil.pt"
    torch.save({"model": _Reduce(func, args), "epoch": -1}, path)
    with pytest.raises(pickle.UnpicklingError, match="refusing") as e:
        checkpoint.load_official_checkpoint(path)
    assert isinstance(e.value, checkpoint.UnsafeCheckpointError) and str(path) in str(e.value)
    with pytest.raises(checkpoint.UnsafeCheckpointError):
        yolov7.load_weights(yolov7.build_model(SMALL_V7), path)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(checkpoint.CheckpointError, match="junk.pt"):
        checkpoint.load_official_checkpoint(junk)
    torch.save({"epoch": 3, "optimizer": None}, tmp_path / "empty.pt")
    with pytest.raises(checkpoint.CheckpointError, match="'model'/'ema'"):
        checkpoint.load_official_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError):
        checkpoint.load_official_checkpoint(tmp_path / "missing.pt")

"""YOLOv4 / YOLOv4-tiny from darknet cfgs (yolo_triton.models.darknet) and their ONNX export (build/create_onnx.py).

The big models run at small inputs (yolov4 at 320 and 160, yolov4-tiny at 320); the full-size yolov4 is only
built (structure, parameter count), never run. A hand-written cfg exercises every supported layer and is
checked against an independent reference written here (plain numpy / torch.nn.functional following darknet's
C code: its own .weights reader, maxpool loops, activations and the [yolo] decode by entry_index).
"""
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F


from yolo_triton import errors, specs

from yolo_triton.models import darknet


from build import create_onnx

TINY = specs.YOLOV4_TINY.with_overrides(input_size=(320, 320))
V4 = specs.YOLOV4.with_overrides(input_size=(320, 320))

# Published figures. Parameters of yolov4.cfg at 80 classes, BatchNorm gamma/beta included (the figure PyTorch
# ports print). Floats in the public .weights files = (file size - 20-byte header) / 4: yolov4.weights is
# 257,717,640 bytes, yolov4-tiny.weights 24,251,276 bytes. BFLOPs as darknet prints them when loading the cfg
# ("Total BFLOPS 128.459" / "6.910": 2·MACs of the convs, plus maxpool windows and shortcut adds).
YOLOV4_PARAMS = 64_363_101
YOLOV4_FLOATS = 64_429_405
YOLOV4_TINY_FLOATS = 6_062_814
YOLOV4_BFLOPS = 128.459
YOLOV4_TINY_BFLOPS = 6.910


def _images(n, size, seed=0):
    """Image-like inputs: smooth colour fields with a bit of pixel noise, in 0..1."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand(n, 3, max(h // 16, 1), max(w // 16, 1), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.85 * smooth + 0.15 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def _run(model, x):
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def tiny():
    return darknet.init_random_weights(darknet.from_spec(TINY), 0).eval()


@pytest.fixture(scope="module")
def v4_weights(tmp_path_factory):
    """The seeded random yolov4 (built at 320) and its darknet .weights file."""
    model = darknet.init_random_weights(darknet.from_spec(V4), 0).eval()
    path = tmp_path_factory.mktemp("v4") / "yolov4.weights"
    darknet.save_darknet_weights(model, path)
    return model, path


# ----------------------------------------------------------------------------------------------------------------
# cfg parsing and errors
# ----------------------------------------------------------------------------------------------------------------


def test_parse_cfg_comments_whitespace_lists():
    text = """# a comment
; another
[net]
 width = 416   # trailing comment
height=416

[route]
layers = -1, -3 ;comment
[YOLO]
anchors = 10,14,  23,27,
"""
    sections = darknet.parse_cfg(text)
    assert [dict(s) for s in sections] == [
        {"type": "net", "width": "416", "height": "416"},
        {"type": "route", "layers": "-1,-3"},
        {"type": "yolo", "anchors": "10,14,23,27,"},
    ]
    assert [(s.index, s.line) for s in sections] == [(0, 3), (1, 7), (2, 9)]
    assert sections[1].option_lines == {"layers": 8}


@pytest.mark.parametrize("text, message", [
    ("width=3\n[net]\n", r"cfg line 1: option 'width=3' outside any \[section\]"),
    ("[net]\nwidth 416\n", r"cfg line 2 \(section 0 \[net\]\): expected key=value"),
    ("[net]\n[convolutional]\nfilters=8\nfilters=16\n",
     r"cfg line 4 \(section 1 \[convolutional\]\): option 'filters' given twice.*first at line 3"),
    ("[net]\n[conv\n", r"cfg line 2: malformed section header"),
    ("[net]\nwidth=\n", r"cfg line 2 .*empty value"),
    ("# nothing\n", r"no \[section\]"),
])
def test_parse_cfg_errors_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        darknet.parse_cfg(text)


NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"
HEAD = "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n"


@pytest.mark.parametrize("body, message", [
    ("[foo]\nbar=1\n", r"layer 0 \[foo\] \(cfg line 5\): unsupported layer type \[foo\]"),
    ("[convolutional]\nfilters=8\nactivation=bar\n",
     r"layer 0 \[convolutional\] \(cfg line 5\): activation=bar is not supported"),
    ("[convolutional]\nfilters=8\nsize=3\ndilation=2\n", r"layer 0 \[convolutional\].*dilation=2 is not supported"),
    ("[convolutional]\nfilters=8\nfrobnicate=1\n", r"layer 0 \[convolutional\].*unsupported option\(s\) frobnicate"),
    ("[convolutional]\nfilters=3\n[shortcut]\nfrom=-1\nactivation=leaky\n",
     r"layer 1 \[shortcut\].*activation=leaky is not supported \(only linear\)"),
    ("[convolutional]\nfilters=3\n[shortcut]\nfrom=-1\nweights_type=per_feature\n",
     r"layer 1 \[shortcut\].*weights_type=per_feature is not supported"),
    ("[route]\nlayers=3\n", r"layer 0 \[route\].*refers to layer 3, not an earlier layer"),
    ("[convolutional]\nfilters=8\n[route]\nlayers=-1\ngroups=3\n", r"layer 1 \[route\].*groups=3 does not divide"),
    ("[maxpool]\nsize=2\nstride=2\nmaxpool_depth=1\n", r"layer 0 \[maxpool\].*maxpool_depth=1 is not supported"),
    ("[upsample]\nstride=-2\n", r"layer 0 \[upsample\].*stride=-2 is not supported"),
    ("[convolutional]\nfilters=zz\n", r"layer 0 \[convolutional\].*filters='zz' is not an integer"),
])
def test_unsupported_layers_and_options_name_the_layer(body, message):
    with pytest.raises(ValueError, match=message):
        darknet.DarknetModel(darknet.parse_cfg(NET + body + HEAD))


def test_cfg_structure_errors():
    with pytest.raises(ValueError, match=r"\[yolo\].*18 channels; 2 anchors x \(1 classes \+ 5\) need 12"):
        darknet.DarknetModel(NET + HEAD.replace("mask=0,1,2", "mask=0,1"))
    with pytest.raises(ValueError, match="no \\[yolo\\] layer"):
        darknet.DarknetModel(NET + "[convolutional]\nfilters=4\n")
    with pytest.raises(ValueError, match="first section must be \\[net\\]"):
        darknet.DarknetModel("[convolutional]\nfilters=4\n" + NET)
    with pytest.raises(ValueError, match=r"layer 2 \[convolutional\].*output of \[yolo\] layer 1"):
        darknet.DarknetModel(NET + HEAD + "[convolutional]\nfilters=4\n")
    with pytest.raises(ValueError, match="unknown built-in cfg 'yolov5'"):
        darknet.builtin_cfg("yolov5")
    darknet.DarknetModel(NET + "[dropout]\nprobability=.5\n" + HEAD)  # [dropout] is the explicit identity


# ----------------------------------------------------------------------------------------------------------------
# Built-in cfgs: layer counts, parameter counts, FLOPs against the published figures
# ----------------------------------------------------------------------------------------------------------------


def _darknet_bflops(model):
    """darknet's "Total BFLOPS": 2·MACs per conv, size²·c·out per maxpool, out·n per shortcut."""
    total = 0.0
    for i, layer in enumerate(model.layers):
        c, h, w = model.shapes[i]
        if isinstance(layer, darknet.Convolutional):
            k, c_in = layer.conv.kernel_size[0], layer.conv.in_channels // layer.conv.groups
            total += 2.0 * c * k * k * c_in * h * w
        elif isinstance(layer, darknet.MaxPool):
            total += layer.size * layer.size * c * h * w
        elif isinstance(layer, darknet.Shortcut):
            total += c * h * w * len(layer.sources)
    return total / 1e9


def test_builtin_yolov4_structure_and_published_counts():
    sections = darknet.parse_cfg(darknet.builtin_cfg("yolov4"))
    assert len(sections) - 1 == 162
    model = darknet.DarknetModel(sections)
    kinds = [s["type"] for s in sections[1:]]
    assert [i for i, k in enumerate(kinds) if k == "yolo"] == [139, 150, 161]
    assert kinds.count("convolutional") == 110 and kinds.count("shortcut") == 23 and kinds.count("maxpool") == 3
    routes = {i: sections[i + 1]["layers"] for i, k in enumerate(kinds) if k == "route"}
    assert routes[113] == "-1,-3,-5,-6" and routes[119] == "85" and routes[129] == "54"
    assert routes[142] == "-1,-16" and routes[153] == "-1,-37" and routes[103] == "-1,-16"
    assert sum(sections[i + 1].get("activation") == "mish" for i in range(105)) == 72  # every backbone conv
    assert {sections[i + 1].get("activation") for i in range(105, 162) if kinds[i] == "convolutional"} == \
        {"leaky", "linear"}
    assert (model.height, model.width) == (608, 608) and model.strides == ((8, 8), (16, 16), (32, 32))
    assert model.anchors == tuple(tuple(map(float, a)) for a in specs.YOLOV4.anchors)
    assert model.scale_x_y == (1.2, 1.1, 1.05) and model.num_candidates == 22743
    assert sum(p.numel() for p in model.parameters()) == YOLOV4_PARAMS
    assert darknet.darknet_weight_count(model) == YOLOV4_FLOATS
    assert round(_darknet_bflops(model), 3) == YOLOV4_BFLOPS
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}


def test_builtin_yolov4_tiny_structure_and_published_counts():
    sections = darknet.parse_cfg(darknet.builtin_cfg("yolov4-tiny"))
    assert len(sections) - 1 == 38
    model = darknet.DarknetModel(sections)
    kinds = [s["type"] for s in sections[1:]]
    assert [i for i, k in enumerate(kinds) if k == "yolo"] == [30, 37]
    assert kinds.count("convolutional") == 21 and kinds.count("maxpool") == 3
    grouped = [i for i, s in enumerate(sections[1:]) if s.get("groups") == "2"]
    assert grouped == [3, 11, 19] and all(sections[i + 1]["group_id"] == "1" for i in grouped)
    assert sections[35]["layers"] == "-1,23"
    assert model.yolo_indices == (37, 30)  # output order: stride 16 first, although the cfg lists 32 first
    assert model.strides == ((16, 16), (32, 32)) and model.scale_x_y == (1.05, 1.05)
    assert model.anchors == tuple(tuple(map(float, a)) for a in specs.YOLOV4_TINY.anchors)
    assert darknet.darknet_weight_count(model) == YOLOV4_TINY_FLOATS
    assert round(_darknet_bflops(model), 3) == YOLOV4_TINY_BFLOPS
    assert {type(layer.act) for layer in model.convolutions} == {torch.nn.LeakyReLU, torch.nn.Identity}


# ----------------------------------------------------------------------------------------------------------------
# An independent reference on a hand-written cfg that uses every supported layer
# ----------------------------------------------------------------------------------------------------------------

SMALL_CFG = """
[net]
# a cfg trained elsewhere would carry training options: ignored
batch=64
learning_rate=0.001
width=96
height=64
channels=3

[convolutional]   # 0: 8 x 64x96
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]   # 1: 16 x 32x48
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[route]           # 2: the second half of layer 1's channels
layers=-1
groups=2
group_id=1

[convolutional]   # 3: no BN
filters=8
size=3
stride=1
pad=1
activation=swish

[convolutional]   # 4: grouped 1x1
batch_normalize=1
filters=8
size=1
stride=1
pad=1
groups=2
activation=relu

[route]           # 5: 16 = 8 + 8
layers=-1,-2

[shortcut]        # 6: + layer 1
from=-5
activation=linear

[maxpool]         # 7: 16 x 16x24
size=2
stride=2

[convolutional]   # 8: linear, so the maxpools below see negative values (-inf padding matters)
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=linear

[maxpool]         # 9: SPP style, keeps the size
size=5
stride=1

[maxpool]         # 10: size 2 stride 1: padding 1 on the right/bottom only
size=2
stride=1

[maxpool]         # 11: 16 x 8x12
size=3
stride=2

[dropout]         # 12: identity at inference
probability=0.5

[convolutional]   # 13
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=logistic

[convolutional]   # 14: head, 2 anchors x (5 + 3)
filters=16
size=1
stride=1
pad=1
activation=linear

[yolo]            # 15: stride 8
mask=3,4
anchors=4,6, 10,12, 16,9, 20,30, 40,28
classes=3
num=5
scale_x_y=1.1
jitter=.3
ignore_thresh=.7

[route]           # 16
layers=-3

[upsample]        # 17: 16 x 16x24
stride=2

[route]           # 18: 32 x 16x24
layers=-1,8

[convolutional]   # 19: head of a new_coords level: logistic here, no activation in [yolo]
filters=24
size=1
stride=1
pad=1
activation=logistic

[yolo]            # 20: stride 4, listed last, output first
mask=0,1,2
anchors=4,6, 10,12, 16,9, 20,30, 40,28
classes=3
num=5
scale_x_y=2.0
new_coords=1
"""
# (c_in, filters, size, groups, batch_normalize) of each conv, in cfg order: what the .weights file holds
SMALL_CONVS = [(3, 8, 3, 1, True), (8, 16, 3, 1, True), (8, 8, 3, 1, False), (8, 8, 1, 2, True),
               (16, 16, 3, 1, True), (16, 16, 1, 1, True), (16, 16, 1, 1, False), (32, 24, 1, 1, False)]
SMALL_ANCHORS = np.array([4, 6, 10, 12, 16, 9, 20, 30, 40, 28], np.float64).reshape(5, 2)


def ref_read_weights(path):
    data = Path(path).read_bytes()
    major, minor, _ = struct.unpack("<3i", data[:12])
    header = 20 if major * 10 + minor >= 2 else 16
    values = np.frombuffer(data[header:], "<f4").astype(np.float64)
    params, offset = [], 0

    def take(n):
        nonlocal offset
        offset += n
        return values[offset - n:offset]

    for c_in, filters, size, groups, bn in SMALL_CONVS:
        p = {"bias": take(filters)}
        if bn:
            p["scale"], p["mean"], p["var"] = take(filters), take(filters), take(filters)
        p["weight"] = take(filters * c_in // groups * size * size).reshape(filters, c_in // groups, size, size)
        params.append(p)
    assert offset == len(values)
    return params


def ref_activate(x, kind):
    if kind == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if kind == "mish":  # darknet: softplus with threshold 20
        softplus = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log(np.exp(np.minimum(x, 20)) + 1)))
        return x * np.tanh(softplus)
    if kind == "swish":
        return x / (1 + np.exp(-x))
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "logistic":
        return 1 / (1 + np.exp(-x))
    assert kind == "linear"
    return x


def ref_conv(x, p, size, stride, groups, bn, activation):
    out = F.conv2d(torch.from_numpy(x), torch.from_numpy(p["weight"]), None, stride, size // 2, 1, groups).numpy()
    if bn:  # darknet normalize_cpu + scale_bias + add_bias
        out = (out - p["mean"][:, None, None]) / np.sqrt(p["var"][:, None, None] + 1e-5)
        out = out * p["scale"][:, None, None]
    return ref_activate(out + p["bias"][:, None, None], activation)


def ref_maxpool(x, size, stride, padding=None):
    """darknet forward_maxpool_layer: windows from -padding/2; positions outside the input are skipped."""
    padding = size - 1 if padding is None else padding
    n, c, h, w = x.shape
    out_h, out_w = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    offset = -(padding // 2)
    out = np.empty((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y0, x0 = i * stride + offset, j * stride + offset
            window = x[:, :, max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)]
            out[:, :, i, j] = window.max(axis=(2, 3))
    return out


def ref_yolo(x, mask, anchors, classes, scale, new_coords, net_hw):
    """darknet forward_yolo_layer + get_yolo_box, indexing the flat output with entry_index, per image:
    rows in (anchor, row, column) order: cx, cy, w, h in input pixels, objectness, classes."""
    n_images, _, lh, lw = x.shape
    net_h, net_w = net_hw
    rows = []
    for b in range(n_images):
        out = x[b].reshape(-1).copy()
        entries = 5 + classes

        def entry_index(n, loc, entry):
            return n * lw * lh * entries + entry * lw * lh + loc

        for n in range(len(mask)):
            i0 = entry_index(n, 0, 0)
            if not new_coords:
                out[i0:i0 + 2 * lw * lh] = ref_activate(out[i0:i0 + 2 * lw * lh], "logistic")
                o0 = entry_index(n, 0, 4)
                out[o0:o0 + (1 + classes) * lw * lh] = ref_activate(out[o0:o0 + (1 + classes) * lw * lh], "logistic")
            out[i0:i0 + 2 * lw * lh] = out[i0:i0 + 2 * lw * lh] * scale - 0.5 * (scale - 1)
        for n in range(len(mask)):
            aw, ah = anchors[mask[n]]
            for j in range(lh):
                for i in range(lw):
                    loc = j * lw + i
                    tx, ty, tw, th = (out[entry_index(n, loc, k)] for k in range(4))
                    bx, by = (i + tx) / lw, (j + ty) / lh
                    if new_coords:
                        bw, bh = tw * tw * 4 * aw / net_w, th * th * 4 * ah / net_h
                    else:
                        bw, bh = np.exp(tw) * aw / net_w, np.exp(th) * ah / net_h
                    rest = [out[entry_index(n, loc, 4 + k)] for k in range(1 + classes)]
                    rows.append([bx * net_w, by * net_h, bw * net_w, bh * net_h] + rest)
    return np.array(rows).reshape(n_images, len(mask) * lh * lw, 5 + classes)


def ref_small_forward(params, images):
    """SMALL_CFG by hand, layer by layer."""
    net_hw = images.shape[2:]
    x = images.astype(np.float64)
    l0 = ref_conv(x, params[0], 3, 1, 1, True, "leaky")
    l1 = ref_conv(l0, params[1], 3, 2, 1, True, "mish")
    l2 = l1[:, 8:16]
    l3 = ref_conv(l2, params[2], 3, 1, 1, False, "swish")
    l4 = ref_conv(l3, params[3], 1, 1, 2, True, "relu")
    l5 = np.concatenate([l4, l3], 1)
    l6 = l5 + l1
    l7 = ref_maxpool(l6, 2, 2)
    l8 = ref_conv(l7, params[4], 3, 1, 1, True, "linear")
    l9 = ref_maxpool(l8, 5, 1)
    l10 = ref_maxpool(l9, 2, 1)
    l11 = ref_maxpool(l10, 3, 2)
    l13 = ref_conv(l11, params[5], 1, 1, 1, True, "logistic")
    l14 = ref_conv(l13, params[6], 1, 1, 1, False, "linear")
    y15 = ref_yolo(l14, [3, 4], SMALL_ANCHORS, 3, 1.1, False, net_hw)
    l17 = l13.repeat(2, axis=2).repeat(2, axis=3)
    l18 = np.concatenate([l17, l8], 1)
    l19 = ref_conv(l18, params[7], 1, 1, 1, False, "logistic")
    y20 = ref_yolo(l19, [0, 1, 2], SMALL_ANCHORS, 3, 2.0, True, net_hw)
    return np.concatenate([y20, y15], 1)  # ascending stride


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = darknet.init_random_weights(darknet.DarknetModel(SMALL_CFG, name="small"), 3).eval()
    path = tmp_path_factory.mktemp("small") / "small.weights"
    darknet.save_darknet_weights(model, path, seen=1234)
    return model, path


def test_small_cfg_matches_independent_reference(small):
    model, path = small
    assert [type(m).__name__ for m in model.layers] == [
        "Convolutional", "Convolutional", "Route", "Convolutional", "Convolutional", "Route", "Shortcut", "MaxPool",
        "Convolutional", "MaxPool", "MaxPool", "MaxPool", "Dropout", "Convolutional", "Convolutional", "Yolo",
        "Route", "Upsample", "Route", "Convolutional", "Yolo"]
    assert model.yolo_indices == (20, 15) and model.strides == ((4, 4), (8, 8))
    assert model.num_candidates == 3 * 16 * 24 + 2 * 8 * 12
    expected_floats = sum(f * (4 if bn else 1) + f * c // g * s * s for c, f, s, g, bn in SMALL_CONVS)
    assert path.stat().st_size == 20 + 4 * expected_floats == 20 + 4 * darknet.darknet_weight_count(model)

    x = _images(2, (64, 96), seed=4)
    got = _run(model, x)
    want = ref_small_forward(ref_read_weights(path), x.numpy())
    assert got.shape == want.shape == (2, model.num_candidates, 8)
    np.testing.assert_allclose(got[..., :4], want[..., :4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got[..., 4:], want[..., 4:], rtol=1e-4, atol=1e-5)
    # not a degenerate case: scores spread, the new_coords boxes stay within (2·1)² · anchor
    assert got[..., 5:].std() > 0.05 and got[..., 4].std() > 1e-4
    assert (got[:, : 3 * 16 * 24, 2] <= 4 * 16 + 1e-3).all() and got[..., 2].std() > 1.0

    # another input size than the cfg's: the grid and the per-axis stride follow the input
    x = _images(1, (32, 128), seed=5)
    np.testing.assert_allclose(_run(model, x), ref_small_forward(ref_read_weights(path), x.numpy()),
                               rtol=1e-4, atol=1e-3)


def test_small_cfg_weights_round_trip_and_fuse(small):
    model, path = small
    loaded = darknet.load_darknet_weights(darknet.DarknetModel(SMALL_CFG), path).eval()
    assert loaded.darknet_header == (0, 2, 5, 1234)
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    x = _images(2, (64, 96), seed=6)
    expected = _run(model, x)
    np.testing.assert_array_equal(_run(loaded, x), expected)

    loaded.fuse()
    assert loaded.is_fused and not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    got = _run(loaded, x)
    assert np.abs(got[..., :4] - expected[..., :4]).max() <= 1e-4 * np.abs(expected[..., :4]).max()
    assert np.abs(got[..., 4:] - expected[..., 4:]).max() <= 1e-5
    with pytest.raises(ValueError, match="unfused"):
        darknet.save_darknet_weights(loaded, path.parent / "fused.weights")


def test_small_cfg_exports_to_onnx_with_dynamic_batch(small, tmp_path):
    """Every layer kind (the asymmetric maxpool's -inf Pad, grouped routes, new_coords) in standard ONNX ops."""
    import warnings

    import onnx

    model, path = small
    fused = darknet.load_darknet_weights(darknet.DarknetModel(SMALL_CFG), path).eval().fuse()
    onnx_path = tmp_path / "small.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fused, (_images(2, (64, 96)),), str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["output"],
                          dynamic_axes={"images": {0: "batch"}, "output": {0: "batch"}})
    proto = onnx.load(str(onnx_path))
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert {"Pad", "MaxPool", "Softplus", "Tanh", "Resize", "Slice"} <= {node.op_type for node in proto.graph.node}
    session = _session(onnx_path)
    for batch in (1, 3):
        x = _images(batch, (64, 96), seed=20 + batch)
        (got,) = session.run(None, {"images": x.numpy()})
        np.testing.assert_allclose(got, _run(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, stride, padding, hw", [
    (2, 2, None, (7, 9)), (2, 1, None, (5, 6)), (3, 2, None, (9, 8)), (5, 1, None, (6, 7)), (3, 3, 0, (10, 11)),
    (3, 2, 1, (7, 7)), (4, 2, None, (9, 6)),
])
def test_maxpool_darknet_padding(size, stride, padding, hw):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(size * 10 + stride)) - 2.0
    pool = darknet.MaxPool(size, stride, size - 1 if padding is None else padding)
    got = pool(x).numpy()
    want = ref_maxpool(x.numpy().astype(np.float64), size, stride, padding)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want.astype(np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Darknet weights files
# ----------------------------------------------------------------------------------------------------------------


def test_yolov4_tiny_weights_round_trip(tiny, tmp_path):
    path = tmp_path / "tiny.weights"
    darknet.save_darknet_weights(tiny, path)
    data = path.read_bytes()
    assert data[:20] == struct.pack("<3iq", 0, 2, 5, 0) and len(data) == 20 + 4 * YOLOV4_TINY_FLOATS
    loaded = darknet.load_darknet_weights(darknet.from_spec(TINY), path).eval()
    x = _images(2, TINY.input_size, seed=1)
    np.testing.assert_array_equal(_run(loaded, x), _run(tiny, x))


def test_yolov4_weights_round_trip(v4_weights):
    model, path = v4_weights
    assert path.stat().st_size == 20 + 4 * YOLOV4_FLOATS  # the size of the public yolov4.weights
    loaded = darknet.load_darknet_weights(darknet.from_spec(V4), path).eval()
    x = _images(1, (160, 160), seed=2)
    np.testing.assert_array_equal(_run(loaded, x), _run(model, x))


def test_weights_file_size_is_checked_exactly(small, tmp_path):
    _, path = small
    data = path.read_bytes()
    count = (len(data) - 20) // 4
    fresh = darknet.DarknetModel(SMALL_CFG)
    (tmp_path / "short.weights").write_bytes(data[:-8])
    with pytest.raises(ValueError, match=rf"holds {count - 2} floats after the header.*needs {count}: too short"):
        darknet.load_darknet_weights(fresh, tmp_path / "short.weights")
    (tmp_path / "long.weights").write_bytes(data + b"\0" * 12)
    with pytest.raises(ValueError, match=rf"holds {count + 3} floats.*needs {count}: 3 trailing floats"):
        darknet.load_darknet_weights(fresh, tmp_path / "long.weights")
    (tmp_path / "odd.weights").write_bytes(data + b"\0")
    with pytest.raises(ValueError, match=rf"not a whole number of float32 values; expected {count} floats"):
        darknet.load_darknet_weights(fresh, tmp_path / "odd.weights")
    (tmp_path / "tiny.weights").write_bytes(data[:8])
    with pytest.raises(ValueError, match="too short for a darknet weights header"):
        darknet.load_darknet_weights(fresh, tmp_path / "tiny.weights")
    with pytest.raises(FileNotFoundError):
        darknet.load_darknet_weights(fresh, tmp_path / "missing.weights")
    # version 0.1 files store "seen" as int32: a 16-byte header
    (tmp_path / "old.weights").write_bytes(struct.pack("<4i", 0, 1, 0, 7) + data[20:])
    old = darknet.load_darknet_weights(fresh, tmp_path / "old.weights")
    assert old.darknet_header == (0, 1, 0, 7)


# ----------------------------------------------------------------------------------------------------------------
# Random weights, decode order of the built-in models
# ----------------------------------------------------------------------------------------------------------------


def test_random_weights_deterministic_and_warn(caplog):
    def build(seed):
        with caplog.at_level(logging.WARNING, logger="yolo_triton"):
            return darknet.init_random_weights(darknet.from_spec(TINY.with_overrides(input_size=(160, 160))), seed)

    a, b, c = build(5).state_dict(), build(5).state_dict(), build(6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert any("RANDOM WEIGHTS: boxes from this model are meaningless" in r.getMessage() for r in caplog.records)


def test_tiny_decode_order_and_random_weights_on_a_photo(tiny):
    """Levels in ascending stride (layer 37 before 30), each (anchor, row, column), re-derived from the raw head
    outputs; and a plausible number of boxes on a real photo."""
    import cv2
    import skimage

    from yolo_triton.pipeline.postprocess import postprocess
    from yolo_triton.specs import DetectionParams
    from yolo_triton.pipeline.preprocess import fit_image

    raw = {}
    hooks = [tiny.layers[j - 1].register_forward_hook(lambda m, i, o, j=j: raw.__setitem__(j, o.numpy().copy()))
             for j in (30, 37)]
    try:
        x = _images(1, TINY.input_size, seed=3)
        y = _run(tiny, x)
    finally:
        for h in hooks:
            h.remove()
    anchors = np.array(darknet.YOLOV4_TINY_ANCHORS, np.float64).reshape(6, 2)
    want = np.concatenate([ref_yolo(raw[37], [1, 2, 3], anchors, 80, 1.05, False, TINY.input_size),
                           ref_yolo(raw[30], [3, 4, 5], anchors, 80, 1.05, False, TINY.input_size)], 1)
    assert y.shape == (1, TINY.num_candidates, 85) == want.shape
    np.testing.assert_allclose(y[..., :4], want[..., :4], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(y[..., 4:], want[..., 4:], rtol=1e-5, atol=1e-6)

    photo = cv2.imread(str(Path(skimage.__file__).parent / "data" / "astronaut.png"), cv2.IMREAD_COLOR)
    image, meta = fit_image(photo, specs.YOLOV4_TINY.input_size, 127.5, "stretch")
    full = darknet.init_random_weights(darknet.from_spec(specs.YOLOV4_TINY), 0).eval()
    out = _run(full, torch.from_numpy(image)[None])[0]
    detections = postprocess(out, meta, DetectionParams())
    assert 1 <= len(detections.scores) < 150
    assert (out[:, 2:4] < 20 * 344).all()  # exp(tw) kept in range


# ----------------------------------------------------------------------------------------------------------------
# Spec consistency
# ----------------------------------------------------------------------------------------------------------------


def test_cfg_file_must_match_the_spec(tiny, tmp_path):
    text = darknet.builtin_cfg("yolov4-tiny")
    good = tmp_path / "tiny.cfg"
    good.write_text(text)
    from_file = darknet.init_random_weights(darknet.from_spec(TINY, good), 0)
    assert from_file.cfg_source == "tiny.cfg" and from_file.layers[0].conv.weight.shape == (32, 3, 3, 3)
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in from_file.state_dict().items())

    bad = tmp_path / "anchors.cfg"
    bad.write_text(text.replace("81, 82", "81, 90"))
    with pytest.raises(ValueError, match=r"anchors.cfg does not match spec yolov4_tiny: level 0 .*anchors "
                                         r"\[23, 27, 37, 58, 81, 90\], spec \[23, 27, 37, 58, 81, 82\]"):
        darknet.from_spec(TINY, bad)
    scale = tmp_path / "scale.cfg"
    scale.write_text(text.replace("scale_x_y=1.05", "scale_x_y=1.1"))
    with pytest.raises(ValueError, match=r"scale_x_y \[1.1, 1.1\], spec \[1.05, 1.05\]"):
        darknet.from_spec(TINY, scale)
    classes = tmp_path / "classes.cfg"
    classes.write_text(darknet.builtin_cfg("yolov4-tiny", classes=20))
    with pytest.raises(ValueError, match=r"classes 20, spec 80 labels"):
        darknet.from_spec(TINY, classes)
    with pytest.raises(ValueError, match=r"\[yolo\] strides \[8, 16, 32\] .* spec \[16, 32\]"):
        v4 = tmp_path / "v4.cfg"
        v4.write_text(darknet.builtin_cfg("yolov4"))
        darknet.from_spec(TINY, v4)
    with pytest.raises(ValueError, match="width/depth multiples do not apply"):
        darknet.from_spec(TINY.with_overrides(width_multiple=0.5))
    with pytest.raises(ValueError, match="not built from a darknet cfg"):
        darknet.from_spec(specs.YOLOV7)


# ----------------------------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------------------------


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_onnx(path, model, spec, seeds):
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops = {node.op_type for node in proto.graph.node}
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # no custom ops
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_name"] == spec.name and meta["family"] == "yolov4"
    assert json.loads(meta["input_size"]) == list(spec.input_size)
    assert meta["darknet_cfg"] == f"builtin:{spec.architecture}" and len(meta["darknet_cfg_sha256"]) == 64
    assert json.loads(meta["scale_x_y"]) == list(spec.scale_x_y)

    session = _session(path)
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == specs.DETECTOR_INPUT and outp.name == specs.DETECTOR_OUTPUT
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, *spec.input_size]
    assert isinstance(outp.shape[0], str) and outp.shape[1:] == [spec.num_candidates, 85]
    for batch, seed in zip((1, 3), seeds):
        x = _images(batch, spec.input_size, seed=seed)
        expected = _run(model, x)  # unfused PyTorch: also checks the fused export
        (got,) = session.run(None, {specs.DETECTOR_INPUT: x.numpy()})
        assert got.shape == (batch, spec.num_candidates, 85)
        box_scale = np.abs(expected[..., :4]).max()
        assert np.abs(got[..., :4] - expected[..., :4]).max() <= 1e-4 * box_scale
        assert np.abs(got[..., 4:] - expected[..., 4:]).max() <= 1e-4
    return ops, meta


def test_onnx_export_yolov4_tiny(tiny, tmp_path):
    out = create_onnx.export_onnx(TINY, tmp_path / "tiny.onnx", seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]
    ops, meta = _check_onnx(out, tiny, TINY, seeds=(11, 12))
    assert meta["random_weights"] == "true" and meta["seed"] == "0"
    assert "LeakyRelu" in ops and "Softplus" not in ops


def test_onnx_export_yolov4_from_darknet_weights(v4_weights, tmp_path):
    model, weights = v4_weights
    out = create_onnx.export_onnx(V4, tmp_path / "v4.onnx", weights=weights)
    ops, meta = _check_onnx(out, model, V4, seeds=(13, 14))
    assert {"Softplus", "Tanh", "Mul", "LeakyRelu", "MaxPool", "Resize"} <= ops  # Mish as standard ops
    assert meta["random_weights"] == "false" and meta["weights"] == "yolov4.weights"


def test_cli_yolov4_tiny(tmp_path, caplog, capsys):
    out, saved = tmp_path / "cli.onnx", tmp_path / "cli.weights"
    small_spec = ["--model", "yolov4_tiny", "--img-size", "160", "160"]
    assert create_onnx.main(small_spec + ["--seed", "3", "--save-darknet-weights", str(saved),
                                          "--output", str(out)]) == 0
    assert saved.stat().st_size == 20 + 4 * YOLOV4_TINY_FLOATS
    bad = tmp_path / "bad.cfg"
    bad.write_text(darknet.builtin_cfg("yolov4-tiny").replace("[upsample]", "[upsample]\nscale=2"))
    # a cfg that does not parse: one paragraph and exit 2 from the script's entry point, no traceback
    assert errors.run(create_onnx.main, "create_onnx", small_spec + ["--cfg", str(bad), "--output", str(tmp_path / "x.onnx")]) == 2
    refused = capsys.readouterr().err
    assert refused.startswith("create_onnx: bad.cfg: layer 33 [upsample]") and "scale=2 is not supported" in refused
    assert "Traceback" not in refused
    with caplog.at_level(logging.ERROR, logger="yolo_triton"):
        assert create_onnx.main(small_spec + ["--save-state-dict", "x.pt", "--output", str(tmp_path / "x.onnx")]) == 2
        assert create_onnx.main(["--model", "yolov7", "--cfg", str(bad), "--output", str(tmp_path / "x.onnx")]) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "--save-state-dict does not apply to yolov4_tiny" in messages
    assert "--cfg does not apply to yolov7" in messages
    assert not (tmp_path / "x.onnx").exists()

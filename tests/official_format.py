"""Official YOLOv7 ``.pt`` checkpoints, made without the official code, for the tests.

The checkpoints are built the way the official repository saves them: a tree of objects of classes named as the
official ones (``models.yolo.Model``, ``models.common.Conv``…, with the official attribute names), living in fake
``models.*`` modules that exist in ``sys.modules`` only while ``torch.save`` runs, converted to FP16 and saved as
``{'model': ..., 'optimizer': None, 'training_results': None, 'epoch': -1}``. Loading happens after the fake modules
are gone, so nothing of them can be imported: the loader's stubs are what restores them.
"""
import contextlib
import copy
import importlib.util
import sys
import types

import torch
from torch import nn

from yolo_triton.models import yolov7
from yolo_triton.models.yolov7_layers import LAYER_TABLES


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


OFFICIAL = {}  # module name -> {class name: class}


def official(module):
    def register(cls):
        cls.__module__ = module
        OFFICIAL.setdefault(module, {})[cls.__name__] = cls
        return cls
    return register


@official("models.common")
class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def fuseforward(self, x):
        return self.act(self.conv(x))


@official("models.common")
class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension


@official("models.common")
class MP(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)


@official("models.common")
class SP(nn.Module):
    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)


@official("models.common")
class SPPCSPC(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)


@official("models.common")
class RepConv(nn.Module):
    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True, deploy=False):
        super().__init__()
        self.deploy, self.groups, self.in_channels, self.out_channels = deploy, g, c1, c2
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())
        self.rbr_identity = nn.BatchNorm2d(num_features=c1) if c2 == c1 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, groups=g, bias=False), nn.BatchNorm2d(c2))


class _Implicit(nn.Module):
    fill = torch.zeros

    def __init__(self, channel):
        super().__init__()
        self.channel = channel
        self.implicit = nn.Parameter(type(self).fill(1, channel, 1, 1))


@official("models.common")
class ImplicitA(_Implicit):
    pass


@official("models.common")
class ImplicitM(_Implicit):
    fill = torch.ones


@official("models.yolo")
class Detect(nn.Module):
    stride = None
    export = False

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)


@official("models.yolo")
class IDetect(Detect):
    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__(nc, anchors, ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def fuseforward(self, x):
        return x


@official("models.yolo")
class Model(nn.Module):
    def __init__(self, yaml, layers, save, names, stride):
        super().__init__()
        self.yaml = yaml
        self.model, self.save = nn.Sequential(*layers), save
        self.names, self.nc = list(names), yaml["nc"]
        self.stride = stride
        self.hyp, self.gr = {"lr0": 0.01, "anchor_t": 4.0}, 1.0
        self.class_weights = torch.ones(self.nc)
        self.traced = False


@contextlib.contextmanager
def official_modules():
    """The fake ``models``, ``models.common``, ``models.yolo`` modules, only while the block runs."""
    names = ["models", *OFFICIAL]
    assert not any(n in sys.modules for n in names)
    package = types.ModuleType("models")
    package.__path__ = []
    modules = {"models": package}
    for module_name, classes in OFFICIAL.items():
        module = types.ModuleType(module_name)
        for cls in classes.values():
            setattr(module, cls.__name__, cls)
        setattr(package, module_name.split(".")[1], module)
        modules[module_name] = module
    sys.modules.update(modules)
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)


def _official_layer(m, spec, head):
    """The official module equivalent to our layer ``m`` (same channels; weights copied later)."""
    if isinstance(m, yolov7.Conv):
        c = m.conv
        act = nn.LeakyReLU(0.1) if isinstance(m.act, nn.LeakyReLU) else True
        return Conv(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], None, 1, act)
    if isinstance(m, yolov7.RepConv):
        c = m.rbr_dense[0]
        return RepConv(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0])
    if isinstance(m, yolov7.SPPCSPC):
        return SPPCSPC(m.cv1.conv.in_channels, m.cv7.conv.out_channels)
    if isinstance(m, yolov7.MP):
        return MP()
    if isinstance(m, yolov7.SP):
        return SP(m.m.kernel_size)
    if isinstance(m, yolov7.Concat):
        return Concat(m.d)
    if isinstance(m, nn.Upsample):
        return nn.Upsample(None, 2, "nearest")
    if isinstance(m, yolov7.IDetect):
        cls = IDetect if head == "IDetect" else Detect
        return cls(spec.num_classes, [list(a) for a in spec.anchors], [c.in_channels for c in m.m])
    raise AssertionError(type(m))


def official_model(ours: yolov7.YoloModel, head="IDetect") -> Model:
    """An official-style ``models.yolo.Model`` holding ``ours``' (unfused) weights."""
    spec = ours.spec
    layers = []
    for m in ours.model:
        o = _official_layer(m, spec, head)
        o.i, o.f, o.type, o.np = m.i, m.f, f"{type(o).__module__}.{type(o).__name__}", _count(o)
        layers.append(o)
    stride = torch.tensor([float(s) for s in spec.strides])
    layers[-1].stride = stride
    layers[-1].anchors /= stride.view(-1, 1, 1)
    yaml = {"nc": spec.num_classes, "depth_multiple": 1.0, "width_multiple": spec.width_multiple,
            "anchors": [list(a) for a in spec.anchors],
            "backbone": [[f, 1, name, list(args)] for f, name, args in LAYER_TABLES[spec.architecture]], "head": []}
    model = Model(yaml, layers, list(ours.save), spec.labels, stride)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = 1e-3, 0.03  # official initialize_weights
    state = ours.state_dict()
    if head == "Detect":  # deploy notebook: ImplicitA/M folded into the head convs, no ia/im
        folded = copy.deepcopy(ours)
        folded.detect.fuse()
        state = folded.state_dict()
    model.load_state_dict(state, strict=True)  # the official attribute names give exactly our keys
    return model


def official_fuse(model: Model, ours_fused: yolov7.YoloModel, fuse_head=True) -> Model:
    """What the official ``Model.fuse()`` leaves, with the fused weights of ``ours_fused``: Conv without bn
    (``forward = fuseforward``), RepConv with only ``rbr_reparam``, IDetect keeping its (folded) ia/im modules.
    ``fuse_head=False``: YOLOv7 before July 2022, whose ``Model.fuse()`` left IDetect alone."""
    for i, m in enumerate(model.model):
        ours = ours_fused.model[i]
        for name, sub in list(m.named_modules()):
            if isinstance(sub, Conv):
                ours_sub = ours.get_submodule(name) if name else ours
                sub.conv = copy.deepcopy(ours_sub.conv)
                del sub.bn
                sub.forward = sub.fuseforward
        if isinstance(m, RepConv):
            m.rbr_reparam = copy.deepcopy(ours.rbr_reparam)
            del m.rbr_dense, m.rbr_1x1, m.rbr_identity
            m.rbr_dense = m.rbr_1x1 = m.rbr_identity = None
            m.deploy = True
        if isinstance(m, IDetect) and fuse_head:
            m.m = copy.deepcopy(ours.m)
            m.forward = m.fuseforward
    return model


def save_official(model: Model, path, key="model", **extra):
    """``torch.save`` as official ``strip_optimizer`` leaves it (``key="ema"``: the EMA slot, ``'model'`` None)."""
    with official_modules():
        ckpt = {"model": None, "optimizer": None, "training_results": None, "epoch": -1}
        ckpt[key] = copy.deepcopy(model).half()
        ckpt.update(extra)
        torch.save(ckpt, path)
    assert "models" not in sys.modules and importlib.util.find_spec("models") is None
    return path

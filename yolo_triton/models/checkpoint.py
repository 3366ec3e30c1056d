"""Read official YOLOv7 ``.pt`` checkpoints without the official code.

The official repository saves whole pickled models::

    torch.save({'model': deepcopy(model).half(), 'optimizer': None, 'training_results': None, 'epoch': -1, ...})

(``train.py`` / ``strip_optimizer``, the re-parameterisation notebook), where ``model`` is a ``models.yolo.Model``
whose children are ``models.common.Conv``, ``RepConv``, ``models.yolo.IDetect``… Unpickling such a file normally
imports those modules. Here every class from the official code's packages (``models.*``, ``utils.*``) is replaced
by an empty :class:`torch.nn.Module` subclass of the same name: ``nn.Module.__setstate__`` restores its
``_parameters``, ``_buffers`` and ``_modules`` and the attributes (``names``, ``nc``, ``yaml``…), so
``.state_dict()`` of the restored root has exactly the official ``model.<i>.…`` keys.

**This unpickles** (``torch.load(..., weights_only=False)``): only load files you trust. The unpickler is
restricted (:class:`RestrictedUnpickler`): it resolves only torch's tensor/storage rebuild functions, dtypes and
``torch.nn`` module classes, a few harmless builtins and collections, numpy's array reconstruction, and stubs for
the official packages; any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ``torch.load``…)
raises :class:`UnsafeCheckpointError` before it is called. A plain state-dict file is read with
``weights_only=True`` first and never reaches that path.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import os
import pickle
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

# Packages of the official repository whose classes become stubs.
STUB_PACKAGES = ("models", "utils")

# A Model's top-level attributes copied into the info dict when they are plain values.
_MODEL_ATTRIBUTES = ("names", "nc", "yaml", "yaml_file", "hyp", "gr")


class CheckpointError(ValueError):
    """The file is not a checkpoint of a supported form, or does not fit the model."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle asks for a global outside the allowlist; nothing of it was called."""


class OfficialStub(nn.Module):
    """Base of the stand-ins for the official classes: a bare module whose state pickle restores."""

    _official_name = "?"

    def __init__(self, *args, **kwargs):  # called (if ever) with the official constructor's arguments: ignored
        super().__init__()

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self._official_name} is a stand-in for the official class, restored only to read its "
                           "weights; it cannot run")


class _StubMethod:
    """What ``getattr(stub, name)`` gives while unpickling: the official ``Model.fuse()`` stores bound methods
    (``m.forward = m.fuseforward``), which pickle as ``getattr(obj, 'fuseforward')``."""

    def __init__(self, owner: str, name: str):
        self.owner, self.name = owner, name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.owner}.{self.name} is not available (official code not loaded)")

    def __repr__(self) -> str:
        return f"<stub method {self.owner}.{self.name}>"


def _stub_getattr(obj, name):
    if isinstance(obj, OfficialStub) and isinstance(name, str):
        return _StubMethod(obj._official_name, name)
    raise UnsafeCheckpointError(
        f"refusing getattr({type(obj).__name__}, {name!r}) while unpickling: only bound methods of the official "
        "model classes are expected here")


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol 2 uses it for ``bytes`` (numpy arrays): only the latin-1 case."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafeCheckpointError(f"refusing _codecs.encode(..., {encoding!r}, {errors!r}) while unpickling")
    return text.encode("latin1")


# Tensor reconstruction (the same set torch's own weights_only unpickler allows).
_TENSOR_REBUILDS = {("torch._utils", n) for n in (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor")} | {("torch._tensor", "_rebuild_from_type_v2"),
                                                ("torch.serialization", "_get_layout")}
_TORCH_OBJECTS = {
    ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"), ("torch.nn.parameter", "Parameter"),
    ("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage"),
}
_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "bytearray", "list", "dict", "tuple", "int", "float",
             "bool", "str", "bytes", "object"}
_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only an allowlist of globals and stubs the official YOLOv7 classes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stubs: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if not isinstance(module, str) or not isinstance(name, str) or "." in name:
            raise UnsafeCheckpointError(f"refusing global {module!r}.{name!r} in a checkpoint")
        # protocol 2 (torch.save's) writes Python 2 names (__builtin__.set); map them as pickle's own find_class does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if module.split(".")[0] in STUB_PACKAGES:
            return self._stub(module, name)
        if module == "builtins":
            if name == "getattr":
                return _stub_getattr
            if name in _BUILTINS:
                return getattr(builtins, name)
        elif module == "_codecs" and name == "encode":
            return _latin1_encode
        elif module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        elif module == "torch" or module.startswith("torch."):
            obj = self._torch_global(module, name)
            if obj is not None:
                return obj
        elif (module, name) in _NUMPY or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to load global {module}.{name} from a checkpoint: it is not a tensor, a torch.nn module or "
            f"a class of the official YOLOv7 code ({', '.join(p + '.*' for p in STUB_PACKAGES)}). The file may be "
            "malicious or of another kind; nothing from it was run.")

    def _torch_global(self, module: str, name: str):
        if (module, name) in _TORCH_OBJECTS or (module, name) in _TENSOR_REBUILDS:
            return super().find_class(module, name)
        if module == "torch" and not name.startswith("_"):
            obj = getattr(torch, name, None)
            if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        if module.startswith("torch.nn.modules.") and not name.startswith("_"):
            try:
                obj = super().find_class(module, name)
            except (ImportError, AttributeError):
                return None
            if isinstance(obj, type) and issubclass(obj, nn.Module):
                return obj
        return None

    def _stub(self, module: str, name: str) -> type:
        key = (module, name)
        if key not in self.stubs:
            self.stubs[key] = type(name, (OfficialStub,), {"__module__": module, "__qualname__": name,
                                                           "_official_name": f"{module}.{name}"})
        return self.stubs[key]


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load`` (legacy format)."""

    __name__ = "yolo_triton.models.checkpoint._RestrictedPickleModule"
    Unpickler = RestrictedUnpickler
    load = staticmethod(_restricted_load)
    UnpicklingError = pickle.UnpicklingError
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _float32(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return collections.OrderedDict(
        (k, v.detach().float().contiguous() if v.is_floating_point() else v.detach()) for k, v in state.items())


def _plain(value: Any) -> Any:
    """``value`` if it is made of plain Python data (kept in the info dict), else None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else type(value)(items)
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return None if any(items[k] is None and value[k] is not None for k in value) else items
    return None


def _qualname(obj: Any) -> str:
    if isinstance(obj, OfficialStub):
        return obj._official_name
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _describe_model(root: nn.Module, info: Dict[str, Any]) -> None:
    """Copy what the restored official Model says about itself into ``info``."""
    info["model_class"] = _qualname(root)
    for attr in _MODEL_ATTRIBUTES:
        value = root.__dict__.get(attr)
        if value is not None and _plain(value) is not None:
            info[attr] = _plain(value)
    if "names" in info:
        names = info["names"]
        info["names"] = [str(n) for n in (names.values() if isinstance(names, dict) else names)]
    layers = root._modules.get("model")
    if isinstance(layers, nn.Module) and len(layers._modules):
        info["num_layers"] = len(layers._modules)
        info["layer_types"] = [_qualname(m).rsplit(".", 1)[-1] for m in layers._modules.values()]
        head = list(layers._modules.values())[-1]
        info["head_class"] = _qualname(head)
        # official Model.fuse() sets ``forward = fuseforward`` on a fused IDetect (its ia/im folded into m)
        forward = head.__dict__.get("forward")
        info["head_fused"] = isinstance(forward, _StubMethod) and forward.name == "fuseforward"
        stride = head.__dict__.get("stride")
        if isinstance(stride, torch.Tensor):
            info["stride"] = [float(s) for s in stride.flatten()]
    eps = {name: float(m.eps) for name, m in root.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if eps:
        info["bn_eps"] = eps


def _implicit_keys(state: Dict[str, torch.Tensor]):
    return [k for k in state if ".ia." in k or ".im." in k]


def _normalise_folded_head(state: Dict[str, torch.Tensor], info: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """Drop ImplicitA/M tensors that the checkpoint already folded into the head convs.

    Official ``Model.fuse()`` folds them (``IDetect.fuse``) but keeps the modules; our fused head has none. Evidence
    is the fused head's ``forward = fuseforward``. A plain state dict with ia/im beside an otherwise fused network
    cannot tell (YOLOv7 before July 2022 fused Conv/RepConv but not IDetect), so it is refused.
    """
    implicit = _implicit_keys(state)
    if not implicit:
        return state
    fully_fused = not any(".bn." in k or ".rbr_dense." in k or ".rbr_1x1." in k for k in state)
    if info.get("head_fused"):
        info["implicit_folded"] = True
        return collections.OrderedDict((k, v) for k, v in state.items() if k not in set(implicit))
    if fully_fused and "head_fused" not in info:
        raise CheckpointError(
            f"{info['path']}: a state dict of a fused network (no BatchNorm) that still has ImplicitA/M tensors "
            f"({implicit[0]}, …): it cannot tell whether they were already folded into the head convs. Save the "
            "whole official checkpoint (torch.save({'model': model})) or the unfused model's state_dict instead.")
    return state


def load_official_checkpoint(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a YOLOv7 weights file: ``(state_dict with float32 floating tensors, info)``.

    Accepted: an official checkpoint (``{'model': <models.yolo.Model, FP16>, ...}``; ``'ema'`` when ``'model'`` is
    None; ``'model'`` may itself be a state dict), or a plain state dict (``torch.save(model.state_dict())``).

    ``info``: ``path``; ``format`` (``"state_dict"`` or ``"checkpoint"``); ``source_key`` (``"model"``/``"ema"``);
    when the checkpoint holds a model object: ``model_class`` (e.g. ``"models.yolo.Model"``), ``names``, ``nc``,
    ``yaml``, ``num_layers``, ``layer_types``, ``head_class``, ``head_fused``, ``stride``, ``bn_eps`` (BatchNorm eps
    per state-dict prefix); ``epoch``; ``implicit_folded`` when ImplicitA/M keys were dropped because the checkpoint
    had already folded them.

    **Security:** an official checkpoint is a pickle and is unpickled (``weights_only=False``) by a restricted
    unpickler (see the module docstring). Only load files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    info: Dict[str, Any] = {"path": path}
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # pickled modules / numpy values: not for the weights_only unpickler
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                             pickle_module=_RestrictedPickleModule)
        except UnsafeCheckpointError as exc:
            raise UnsafeCheckpointError(f"{path}: {exc}") from None
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {exc})") from exc

    if _is_state_dict(obj):
        info["format"] = "state_dict"
        state = _float32(obj)
        return _normalise_folded_head(state, info), info
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict or an official checkpoint dict, got "
                              f"{_qualname(obj)}")
    info["format"] = "checkpoint"
    key = "model" if obj.get("model") is not None else "ema" if obj.get("ema") is not None else None
    if key is None:
        raise CheckpointError(f"{path}: a dict with neither a state dict nor a 'model'/'ema' entry "
                              f"(keys: {', '.join(sorted(map(str, obj))[:8])})")
    info["source_key"] = key
    if isinstance(obj.get("epoch"), int):
        info["epoch"] = obj["epoch"]
    root = obj[key]
    if _is_state_dict(root):
        return _normalise_folded_head(_float32(root), info), info
    if not isinstance(root, nn.Module):
        raise CheckpointError(f"{path}: checkpoint[{key!r}] is {_qualname(root)}, neither a model nor a state dict")
    _describe_model(root, info)
    state = root.state_dict()
    if not state:
        raise CheckpointError(f"{path}: checkpoint[{key!r}] ({info['model_class']}) holds no tensors")
    return _normalise_folded_head(_float32(state), info), info

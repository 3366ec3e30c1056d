#!/usr/bin/env python3
"""Build stage 1: a YOLO detector spec -> a fused, checked ONNX file with a dynamic batch dimension.

    python -m build.create_onnx --model yolov7 --output build/out/yolov7.onnx            # seeded random weights
    python -m build.create_onnx --model yolov7 --weights yolov7.pt --output ...          # official checkpoint
    python -m build.create_onnx --model yolov7 --weights yolov7_state.pt --output ...    # or our own state dict
    python -m build.create_onnx --model yolov4 --weights yolov4.weights --output ...     # darknet weights
    python -m build.create_onnx --model yolov4_tiny --cfg my-tiny.cfg --weights my-tiny.weights --output ...

The yolov4 family (``yolov4``, ``yolov4_tiny``) is built from a darknet cfg (``--cfg``, or the built-in
generator of the spec's ``architecture``) by ``yolo_triton.models.darknet`` and takes darknet ``.weights``;
``--save-darknet-weights`` writes the (random) weights in that format.

The ONNX graph takes ``images`` FP32 [N, 3, H, W] (RGB, 0..1, letterboxed) and returns ``output`` FP32
[N, K, 5 + nc] (the official export.py ``--grid`` layout: cx, cy, w, h in input pixels, objectness, class
scores). The file's metadata_props say which spec, input size, layout and weights (random or not, which seed)
it was built from, so that a later stage (TensorRT, Triton config) can check what it is handed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import onnx
import torch

from yolo_triton import errors, specs
from yolo_triton.models.torch_artifact import save_torch_artifact
from yolo_triton.models import darknet
from yolo_triton.models.yolov7 import (
    RANDOM_WEIGHTS_WARNING,
    build_model,
    init_random_weights,
    model_from_weights,
    save_weights,
)

LOGGER = logging.getLogger("yolo_triton")

BATCH_AXIS = "batch"
EXPORT_BATCH = 2  # trace with a batch other than 1, so that nothing gets specialised to a batch of one


def _sha256(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_metadata(spec: specs.ModelSpec, weights: Optional[Union[str, os.PathLike]], seed: int,
                   opset: int, model: Optional[torch.nn.Module] = None) -> Dict[str, str]:
    """The key/value strings written into the ONNX ``metadata_props`` (lists and tuples as JSON).

    For a darknet model (the yolov4 family) also: which cfg (``darknet_cfg``: ``builtin:<name>`` or the file's
    name, ``darknet_cfg_sha256`` of its text) and the [yolo] levels' ``scale_x_y``.
    """
    random_weights = weights is None
    metadata = {
        "model_name": spec.name,
        "family": spec.family,
        "input_name": specs.DETECTOR_INPUT,
        "output_name": specs.DETECTOR_OUTPUT,
        "input_size": json.dumps(list(spec.input_size)),  # [height, width]
        "layout": spec.layout,
        "num_classes": str(spec.num_classes),
        "num_candidates": str(spec.num_candidates),
        "strides": json.dumps(list(spec.strides)),
        "anchors": json.dumps([list(a) for a in spec.anchors]),
        "width_multiple": repr(float(spec.width_multiple)),
        "labels": json.dumps(list(spec.labels)),
        "fit": spec.fit,
        "pad_value": repr(float(spec.pad_value)),
        "random_weights": "true" if random_weights else "false",
        "seed": str(int(seed)) if random_weights else "",
        "weights": "" if random_weights else Path(weights).name,
        "weights_sha256": "" if random_weights else _sha256(weights),
        "opset": str(opset),
        "producer": "yolo_triton build/create_onnx.py",
    }
    if isinstance(model, darknet.DarknetModel):
        metadata.update({
            "darknet_cfg": model.cfg_source,
            "darknet_cfg_sha256": model.cfg_sha256,
            "scale_x_y": json.dumps(list(model.scale_x_y)),
        })
    return metadata


def build_detector(spec: specs.ModelSpec, weights: Optional[Union[str, os.PathLike]] = None, seed: int = 0, *,
                   cfg: Optional[Union[str, os.PathLike]] = None,
                   save_state_dict: Optional[Union[str, os.PathLike]] = None,
                   save_darknet_weights: Optional[Union[str, os.PathLike]] = None,
                   keep_labels: bool = False) -> Tuple[torch.nn.Module, specs.ModelSpec]:
    """(``spec``'s model in eval mode, unfused, with ``weights`` or seeded random ones; the spec as the weights
    are); saves what is asked.

    yolov7 family: our layer table, ``weights`` an official checkpoint (whose own width, depth, anchors and class
    names the spec takes, unless ``keep_labels``) or our state dict. yolov4 family: a darknet cfg (``cfg``, else the spec's built-in one),
    ``weights`` a darknet ``.weights`` file.
    """
    if spec.family == "yolov4":
        if save_state_dict is not None:
            raise ValueError(f"{spec.name}: darknet models save darknet weights (save_darknet_weights), "
                             "not a state dict")
        model = darknet.from_spec(spec, cfg)
        if weights is None:
            darknet.init_random_weights(model, seed)
        else:
            darknet.load_darknet_weights(model, weights)
        model.eval()
        if save_darknet_weights is not None:
            darknet.save_darknet_weights(model, save_darknet_weights)
        # darknet fits images as its cfg says: letter_box=1 keeps the aspect ratio (grey 0.5), otherwise it stretches
        return model, spec.with_overrides(fit="darknet" if model.letter_box else "stretch", pad_value=127.5)
    if spec.family != "yolov7":
        raise ValueError(f"{spec.name}: unknown model family {spec.family!r} (known: yolov7, yolov4)")
    if cfg is not None or save_darknet_weights is not None:
        raise ValueError(f"{spec.name}: a darknet cfg and darknet weights apply to the yolov4 family only")
    if weights is None:
        model = init_random_weights(build_model(spec), seed)
    else:
        model = model_from_weights(spec, weights, take_names=not keep_labels)
        spec = model.spec
    model.eval()
    if save_state_dict is not None:
        save_weights(model, save_state_dict)
    return model, spec


def export_onnx(spec: specs.ModelSpec, output_path: Union[str, os.PathLike],
                weights: Optional[Union[str, os.PathLike]] = None, seed: int = 0, opset: int = 17, *,
                save_state_dict: Optional[Union[str, os.PathLike]] = None,
                cfg: Optional[Union[str, os.PathLike]] = None,
                save_darknet_weights: Optional[Union[str, os.PathLike]] = None,
                save_torch: Optional[Union[str, os.PathLike]] = None, keep_labels: bool = False) -> Path:
    """Build ``spec``'s model, load ``weights`` (or seeded random ones), fuse, export, check; returns the path.

    ``save_torch``: also write the fused model as a RUNTIME=torch artifact (yolo_triton.models.torch_artifact).

    ``save_state_dict`` (yolov7 family): also write the unfused state dict there (what ``--weights`` reads back).
    ``cfg`` (yolov4 family): a darknet cfg file instead of the spec's built-in cfg; ``weights`` is then a darknet
    ``.weights`` file, and ``save_darknet_weights`` writes the model's weights in that format.
    The ONNX file is written to a temporary name in the output folder and renamed when complete, so a failed or
    interrupted export never leaves a half-written file at ``output_path``.
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)

    model, spec = build_detector(spec, weights, seed, cfg=cfg, save_state_dict=save_state_dict,
                                 save_darknet_weights=save_darknet_weights, keep_labels=keep_labels)
    model.fuse()
    if save_torch is not None:
        save_torch_artifact(model, spec, save_torch, meta=build_metadata(spec, weights, seed, opset, model))

    dummy = torch.zeros(EXPORT_BATCH, 3, *spec.input_size)
    dynamic_axes = {specs.DETECTOR_INPUT: {0: BATCH_AXIS}, specs.DETECTOR_OUTPUT: {0: BATCH_AXIS}}
    if spec.rect:  # rectangular inference: any height and width (multiples of the stride), K following them
        dynamic_axes = {specs.DETECTOR_INPUT: {0: BATCH_AXIS, 2: "height", 3: "width"},
                        specs.DETECTOR_OUTPUT: {0: BATCH_AXIS, 1: "candidates"}}
        model.detect.symbolic_grid = True
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".tmp", dir=output_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The feature map sizes become constants (only the batch is dynamic): that is intended.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # The TorchScript exporter (dynamo=False) and its internals are deprecated in favour of torch.export;
            # it is used on purpose (stable opset-17 graphs for TensorRT), so its deprecation notices are noise.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp_path),
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=[specs.DETECTOR_INPUT],
                output_names=[specs.DETECTOR_OUTPUT],
                dynamic_axes=dynamic_axes,
            )
        proto = onnx.load(str(tmp_path))
        # The tracer names the output's K and 5+nc dims symbolically; they are fixed, and Triton and TensorRT
        # want them so. check_model(full_check=True) below re-infers the shapes and fails if they disagree.
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        if not spec.rect:
            out_dims[1].dim_value = spec.num_candidates
        out_dims[2].dim_value = spec.num_outputs
        metadata = build_metadata(spec, weights, seed, opset, model)
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        if weights is None:
            proto.doc_string = f"{RANDOM_WEIGHTS_WARNING} (seed {int(seed)})"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp_path))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp made it 0600; give it the permissions of a normal file
        os.replace(tmp_path, output_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    LOGGER.info("wrote %s (%s, input %s, %s weights)", output_path, spec.name, "x".join(map(str, spec.input_size)),
                "RANDOM" if weights is None else metadata["weights"])
    return output_path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(specs.SPECS), help="model spec name")
    parser.add_argument("--weights", type=Path, default=None,
                        help="yolov7 family: an official checkpoint (yolov7.pt, yolov7-tiny.pt) or a state dict; "
                             "yolov4 family: a darknet .weights file; default: seeded random weights")
    parser.add_argument("--cfg", type=Path, default=None,
                        help="yolov4 family: a darknet .cfg (its [yolo] layers must match the spec); default: the "
                             "built-in generator of the spec's cfg")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (without --weights); default 0")
    parser.add_argument("--labels", type=Path, default=None,
                        help="class names, one a line (darknet's .names); default: the checkpoint's, else the spec's")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input height and width, multiples of the largest stride (default: the spec's)")
    parser.add_argument("--width-multiple", type=float, default=None,
                        help="channel width multiple (default: the spec's)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset; default 17")
    parser.add_argument("--save-state-dict", type=Path, default=None,
                        help="yolov7: also save the (unfused) state dict here, readable by --weights")
    parser.add_argument("--save-torch", type=Path, default=None,
                        help="also write the fused model for RUNTIME=torch (yolo_triton.models.torch_artifact)")
    parser.add_argument("--save-darknet-weights", type=Path, default=None,
                        help="yolov4 family: also save the weights (random or loaded) as a darknet .weights file")
    parser.add_argument("--rect", action="store_true",
                        help="yolov7 family: dynamic height and width, for rectangular inference (ModelSpec.rect)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="ONNX file to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    spec = specs.get_spec(args.model)
    darknet_family = spec.family == "yolov4"
    wrong = ([("--save-state-dict", args.save_state_dict), ("--width-multiple", args.width_multiple)] if darknet_family
             else [("--cfg", args.cfg), ("--save-darknet-weights", args.save_darknet_weights)])
    for option, value in wrong:
        if value is not None:
            LOGGER.error("%s does not apply to %s (family %s)", option, spec.name, spec.family)
            return 2
    overrides = {}
    if args.img_size is not None:
        overrides["input_size"] = tuple(args.img_size)
    if args.width_multiple is not None:
        overrides["width_multiple"] = args.width_multiple
    if args.rect:
        overrides["rect"] = True
    if args.labels is not None:
        overrides["labels"] = tuple(n.strip() for n in args.labels.read_text(encoding="utf-8").splitlines() if n.strip())
    if overrides:
        spec = spec.with_overrides(**overrides)
    export_onnx(spec, args.output, weights=args.weights, seed=args.seed, opset=args.opset,
                save_state_dict=args.save_state_dict, cfg=args.cfg, save_darknet_weights=args.save_darknet_weights,
                save_torch=args.save_torch, keep_labels=args.labels is not None)
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main, "create_onnx"))

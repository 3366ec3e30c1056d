"""The YOLOv7 layer tables, row for row the official yaml files: ``LAYER_TABLES[spec.architecture]``.

Each row: (from, module, args), in the order and with the "from" indices of the official cfg, so that module
indices (and so state-dict keys ``model.<i>.…``) line up with official checkpoints.
"""
from typing import Dict, Tuple

# cfg/deploy/yolov7.yaml; channel args are before the width multiple is applied.
YOLOV7_LAYERS: Tuple[tuple, ...] = (
    # backbone
    (-1, "Conv", (32, 3, 1)),  # 0
    (-1, "Conv", (64, 3, 2)),  # 1-P1/2
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (128, 3, 2)),  # 3-P2/4
    (-1, "Conv", (64, 1, 1)),
    (-2, "Conv", (64, 1, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),  # 11
    (-1, "MP", ()),
    (-1, "Conv", (128, 1, 1)),
    (-3, "Conv", (128, 1, 1)),
    (-1, "Conv", (128, 3, 2)),
    ((-1, -3), "Concat", (1,)),  # 16-P3/8
    (-1, "Conv", (128, 1, 1)),
    (-2, "Conv", (128, 1, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1)),  # 24
    (-1, "MP", ()),
    (-1, "Conv", (256, 1, 1)),
    (-3, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 2)),
    ((-1, -3), "Concat", (1,)),  # 29-P4/16
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (1024, 1, 1)),  # 37
    (-1, "MP", ()),
    (-1, "Conv", (512, 1, 1)),
    (-3, "Conv", (512, 1, 1)),
    (-1, "Conv", (512, 3, 2)),
    ((-1, -3), "Concat", (1,)),  # 42-P5/32
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    ((-1, -3, -5, -6), "Concat", (1,)),
    (-1, "Conv", (1024, 1, 1)),  # 50
    # head
    (-1, "SPPCSPC", (512,)),  # 51
    (-1, "Conv", (256, 1, 1)),
    (-1, "Upsample", (2,)),
    (37, "Conv", (256, 1, 1)),  # route backbone P4
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),  # 63
    (-1, "Conv", (128, 1, 1)),
    (-1, "Upsample", (2,)),
    (24, "Conv", (128, 1, 1)),  # route backbone P3
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1)),
    (-2, "Conv", (128, 1, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    (-1, "Conv", (64, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1)),  # 75
    (-1, "MP", ()),
    (-1, "Conv", (128, 1, 1)),
    (-3, "Conv", (128, 1, 1)),
    (-1, "Conv", (128, 3, 2)),
    ((-1, -3, 63), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),
    (-2, "Conv", (256, 1, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    (-1, "Conv", (128, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1)),  # 88
    (-1, "MP", ()),
    (-1, "Conv", (256, 1, 1)),
    (-3, "Conv", (256, 1, 1)),
    (-1, "Conv", (256, 3, 2)),
    ((-1, -3, 51), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1)),
    (-2, "Conv", (512, 1, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    (-1, "Conv", (256, 3, 1)),
    ((-1, -2, -3, -4, -5, -6), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1)),  # 101
    (75, "RepConv", (256, 3, 1)),
    (88, "RepConv", (512, 3, 1)),
    (101, "RepConv", (1024, 3, 1)),
    ((102, 103, 104), "IDetect", ()),  # Detect(P3, P4, P5)
)

# yolov7-tiny layer table, row for row the official cfg/training/yolov7-tiny.yaml (the released yolov7-tiny.pt has
# this IDetect head): Conv args are the yaml's (c2, k, s, p, g, act), every Conv with its own LeakyReLU(0.1); the SPP
# block is spelled out as plain layers (two 1×1 Convs, SP max-pools 5/9/13, Concat); nn.Upsample args as the yaml's.
_LEAKY = "nn.LeakyReLU(0.1)"
YOLOV7_TINY_LAYERS: Tuple[tuple, ...] = (
    # backbone
    (-1, "Conv", (32, 3, 2, None, 1, _LEAKY)),  # 0-P1/2
    (-1, "Conv", (64, 3, 2, None, 1, _LEAKY)),  # 1-P2/4
    (-1, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),  # 7
    (-1, "MP", ()),  # 8-P3/8
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # 14
    (-1, "MP", ()),  # 15-P4/16
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),  # 21
    (-1, "MP", ()),  # 22-P5/32
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (256, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (256, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (512, 1, 1, None, 1, _LEAKY)),  # 28
    # head
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    (-1, "SP", (5,)),
    (-2, "SP", (9,)),
    (-3, "SP", (13,)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),
    ((-1, -7), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),  # 37
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-1, "Upsample", (None, 2, "nearest")),
    (21, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # route backbone P4
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # 47
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Upsample", (None, 2, "nearest")),
    (14, "Conv", (64, 1, 1, None, 1, _LEAKY)),  # route backbone P3
    ((-1, -2), "Concat", (1,)),
    (-1, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (32, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (32, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),  # 57
    (-1, "Conv", (128, 3, 2, None, 1, _LEAKY)),
    ((-1, 47), "Concat", (1,)),
    (-1, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (64, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (64, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),  # 65
    (-1, "Conv", (256, 3, 2, None, 1, _LEAKY)),
    ((-1, 37), "Concat", (1,)),
    (-1, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-2, "Conv", (128, 1, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    (-1, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    ((-1, -2, -3, -4), "Concat", (1,)),
    (-1, "Conv", (256, 1, 1, None, 1, _LEAKY)),  # 73
    (57, "Conv", (128, 3, 1, None, 1, _LEAKY)),
    (65, "Conv", (256, 3, 1, None, 1, _LEAKY)),
    (73, "Conv", (512, 3, 1, None, 1, _LEAKY)),
    ((74, 75, 76), "IDetect", ()),  # Detect(P3, P4, P5)
)

LAYER_TABLES: Dict[str, Tuple[tuple, ...]] = {"yolov7": YOLOV7_LAYERS, "yolov7-tiny": YOLOV7_TINY_LAYERS}

"""The geometry both paths share (yolo_triton/boxes.py): the letterbox placement against the official formula, and the
box maths giving the same numbers on NumPy arrays and torch tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_triton.boxes import Letterbox, LetterboxMeta, scale_boxes, xywh_to_xyxy


@pytest.mark.parametrize("original_hw", [(480, 640), (640, 480), (427, 640), (1, 3000), (3000, 1), (640, 640), (7, 5)])
@pytest.mark.parametrize("target_hw", [(640, 640), (256, 320)])
def test_letterbox_places_the_image_as_the_official_code(original_hw, target_hw):
    """Official utils/datasets.py letterbox(auto=False): r = min(new/old), unpadded = round(old·r), padding split by
    round(d ± 0.1); scale_coords' gain and padding from the two shapes (written out here, not imported)."""
    (h0, w0), (th, tw) = original_hw, target_hw
    r = min(th / h0, tw / w0)
    unpadded = (max(1, int(round(h0 * r))), max(1, int(round(w0 * r))))
    dh, dw = (th - unpadded[0]) / 2, (tw - unpadded[1]) / 2
    geometry = Letterbox(original_hw, target_hw)
    assert geometry.resized_hw == unpadded
    top, bottom, left, right = geometry.padding
    assert (top, bottom, left, right) == (round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))
    assert top + unpadded[0] + bottom == th and left + unpadded[1] + right == tw
    assert geometry.meta == LetterboxMeta(h0, w0, r, r, (tw - w0 * r) / 2, (th - h0 * r) / 2)


def test_box_maths_equal_on_numpy_and_torch():
    rng = np.random.default_rng(0)
    boxes = (rng.normal(size=(200, 4)) * 400).astype(np.float32)
    meta = LetterboxMeta(427, 640, 1.0, 1.0, 0.0, 106.5)
    for numpy_result, torch_result in ((xywh_to_xyxy(boxes), xywh_to_xyxy(torch.from_numpy(boxes))),
                                       (scale_boxes(boxes, meta), scale_boxes(torch.from_numpy(boxes), meta))):
        assert isinstance(torch_result, torch.Tensor) and numpy_result.dtype == np.float32
        np.testing.assert_array_equal(numpy_result, torch_result.numpy())
    scaled = scale_boxes(boxes, meta)
    assert scaled[:, 0::2].min() >= 0 and scaled[:, 0::2].max() <= 640 and scaled[:, 1::2].max() <= 427
    inside = np.array([[10.0, 120.0, 30.0, 140.0]], np.float32)  # letterbox pixels → original: y - 106.5
    np.testing.assert_array_equal(scale_boxes(inside, meta), [[10.0, 13.5, 30.0, 33.5]])
    assert scale_boxes(np.zeros((0, 4), np.float32), meta).shape == (0, 4)

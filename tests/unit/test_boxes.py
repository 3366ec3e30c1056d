"""The geometry both paths share (yolo_triton/boxes.py): the letterbox placement against the official formula, and the
box maths giving the same numbers on NumPy arrays and torch tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_triton import specs
from yolo_triton.boxes import Letterbox, LetterboxMeta, scale_boxes, smallest_bucket, stride_canvas, xywh_to_xyxy
from yolo_triton.pipeline.preprocess import fit_image

from ..conftest import PHOTO_DIR
from ..reference import ref_letterbox_auto


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


@pytest.mark.parametrize("size_wh", [(1920, 1080), (1280, 720), (640, 480), (640, 427), (1920, 1200), (480, 640),
                                     (1080, 1920), (451, 300), (3000, 7), (7, 3000), (640, 640)])
def test_stride_canvas_is_detect_py_default_letterbox(size_wh):
    """detect.py's letterbox(auto=True) on a real photo resized to the size: the same canvas shape and the same
    pixels from fit_image onto that canvas with the square's gain; the way back = scale_coords from the shapes."""
    import cv2

    photo = cv2.resize(cv2.imread(str(PHOTO_DIR / "astronaut.png")), size_wh, interpolation=cv2.INTER_AREA)
    expected, _, _ = ref_letterbox_auto(photo, 640, stride=32)
    canvas_hw = stride_canvas(photo.shape[:2], (640, 640), 32)
    assert canvas_hw == expected.shape[:2]
    tensor, meta = fit_image(photo, canvas_hw, 114, "letterbox", scale_hw=(640, 640))
    np.testing.assert_array_equal(tensor, expected[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    (h0, w0), (ch, cw) = photo.shape[:2], canvas_hw
    gain = min(ch / h0, cw / w0)  # scale_coords(img.shape[2:], det, im0.shape): from the two shapes
    assert meta == LetterboxMeta(h0, w0, gain, gain, (cw - w0 * gain) / 2, (ch - h0 * gain) / 2)


def test_rect_buckets_and_the_smallest_that_holds():
    assert specs.YOLOV7.rect_buckets() == ((640, 640), (480, 640), (640, 480), (384, 640), (640, 384))
    buckets = specs.YOLOV7.rect_buckets()
    assert smallest_bucket((384, 640), buckets) == (384, 640)  # 16:9 video: 40 % fewer pixels than the square
    assert smallest_bucket((448, 640), buckets) == (480, 640)  # 3:2: the next that holds it
    assert smallest_bucket((640, 32), buckets) == (640, 384)
    assert smallest_bucket((480, 480), buckets) == (480, 640)
    with pytest.raises(ValueError, match="holds 672×640"):
        smallest_bucket((672, 640), buckets)

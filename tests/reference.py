"""An independent reference of the official YOLOv7 detect.py semantics, written for the tests only.

It shares no code with ``yolo_triton``: its own letterbox, its own decoding, its own greedy NMS in plain numpy
and its own scale-back, following the official code's rules (letterbox auto=False, pad 114, obj × cls, best
class only, conf 0.25, per-class NMS at IoU 0.45, max_det 300, scale_coords with clip). The ensemble must
give the same boxes. For the YOLOv4 family, darknet's own way of feeding the network, written after darknet's C
(image.c ``resize_image`` / ``letterbox_image``, yolo_layer.c ``correct_yolo_boxes``, in its relative coordinates),
with OpenCV's bilinear as the resampler (the deployments' and ours).
"""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort


def ref_letterbox(img, new_hw, color=114):
    h, w = img.shape[:2]
    r = min(new_hw[0] / h, new_hw[1] / w)
    # the official code would crash on a 1-pixel-high strip (height rounds to 0); we keep at least 1 pixel
    unpad_w, unpad_h = max(1, int(round(w * r))), max(1, int(round(h * r)))
    dw, dh = (new_hw[1] - unpad_w) / 2, (new_hw[0] - unpad_h) / 2
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas = np.full((new_hw[0], new_hw[1], 3), color, dtype=np.uint8)
    canvas[top : top + unpad_h, left : left + unpad_w] = img
    return canvas


def ref_letterbox_auto(img, new_shape=640, color=114, stride=32):
    """The official utils/datasets.py letterbox with its detect.py defaults (auto=True, scaleup=True): the padding
    only up to a multiple of the stride, borders added by copyMakeBorder. Returns (canvas, ratio, (dw, dh))."""
    h, w = img.shape[:2]
    r = min(new_shape / h, new_shape / w)
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = np.mod(new_shape - unpad_w, stride) / 2, np.mod(new_shape - unpad_h, stride) / 2
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(color,) * 3), r, (dw, dh)


def darknet_new_size(w, h, netw, neth, letter):
    """darknet's (new_w, new_h): letterbox_image / correct_yolo_boxes with letter, else the network's size."""
    if not letter:
        return netw, neth
    if netw / w < neth / h:
        return netw, max(1, (h * netw) // w)
    return max(1, (w * neth) // h), neth


def ref_darknet_fit(img, new_hw, letter, fill=0.5):
    """resize_image (stretch) or letterbox_image (letter_box=1): HWC BGR uint8 → HWC RGB float32 0..1."""
    neth, netw = new_hw
    h, w = img.shape[:2]
    new_w, new_h = darknet_new_size(w, h, netw, neth, letter)
    if (w, h) != (new_w, new_h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    boxed = np.full((neth, netw, 3), np.float32(fill), np.float32)
    dx, dy = (netw - new_w) // 2, (neth - new_h) // 2  # embed_image's offsets, C integer division
    boxed[dy : dy + new_h, dx : dx + new_w] = img[:, :, ::-1].astype(np.float32) / np.float32(255.0)
    return boxed


def ref_darknet_boxes(boxes, orig_hw, input_hw, letter):
    """correct_yolo_boxes, on x1y1x2y2 network pixels: to relative, undo the embedding, back to original pixels."""
    h, w = orig_hw
    neth, netw = input_hw
    new_w, new_h = darknet_new_size(w, h, netw, neth, letter)
    out = np.array(boxes, np.float64).copy()
    out[:, [0, 2]] = ((out[:, [0, 2]] / netw - (netw - new_w) / 2.0 / netw) / (new_w / netw)) * w
    out[:, [1, 3]] = ((out[:, [1, 3]] / neth - (neth - new_h) / 2.0 / neth) / (new_h / neth)) * h
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def ref_input(encoded: bytes, new_hw, fit="letterbox") -> tuple:
    """Returns (NCHW float32 batch of 1, original (h, w)); ``fit`` letterbox (official), stretch or darknet."""
    img = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    if fit == "letterbox":
        boxed = ref_letterbox(img, new_hw)
        x = boxed[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    else:
        x = ref_darknet_fit(img, new_hw, fit == "darknet").transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x), img.shape[:2]


def iou_one_to_many(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def ref_nms_per_class(boxes, scores, classes, iou_thres, agnostic=False):
    keep = []
    groups = np.zeros_like(classes) if agnostic else classes
    for c in np.unique(groups):
        idx = np.where(groups == c)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        while len(idx):
            best, rest = idx[0], idx[1:]
            keep.append(best)
            idx = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou_thres]
    keep = np.array(keep, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


def ref_detect(pred, orig_hw, input_hw, conf=0.25, iou=0.45, max_det=300, fit="letterbox", classes=None,
               agnostic=False, multi_label=False):
    """pred: [K, 85] for one image. Returns (boxes xyxy original pixels, scores, classes) sorted by score.
    ``classes``, ``agnostic``, ``multi_label`` as the official non_max_suppression's arguments."""
    pred = pred[pred[:, 4] > conf]
    cls_conf = pred[:, 5:] * pred[:, 4:5]
    xy, wh = pred[:, :2], pred[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    if multi_label:  # every (box, class) above the threshold, in box then class order
        i, j = np.nonzero(cls_conf > conf)
        boxes, s = boxes[i], cls_conf[i, j]
    else:
        j = cls_conf.argmax(1)
        s = cls_conf[np.arange(len(j)), j]
        m = s > conf
        boxes, s, j = boxes[m], s[m], j[m]
    if classes is not None:
        m = np.isin(j, classes)
        boxes, s, j = boxes[m], s[m], j[m]
    keep = ref_nms_per_class(boxes, s, j, iou, agnostic)[:max_det]
    boxes, s, j = boxes[keep], s[keep], j[keep]
    if fit != "letterbox":
        return ref_darknet_boxes(boxes, orig_hw, input_hw, fit == "darknet").astype(np.float32), s, j
    # scale_coords: gain and padding recomputed from the two shapes, then clip
    h0, w0 = orig_hw
    gain = min(input_hw[0] / h0, input_hw[1] / w0)
    padx, pady = (input_hw[1] - w0 * gain) / 2, (input_hw[0] - h0 * gain) / 2
    boxes = boxes.copy()
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - padx) / gain).clip(0, w0)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pady) / gain).clip(0, h0)
    return boxes, s, j


class Reference:
    """onnxruntime on the same ONNX file + the reference pre/post above."""

    def __init__(self, onnx_path, input_hw, fit="letterbox"):
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.input_hw, self.fit = tuple(input_hw), fit
        self._raw = {}

    def raw(self, encoded: bytes):
        key = hash(encoded)
        if key not in self._raw:
            x, orig_hw = ref_input(encoded, self.input_hw, self.fit)
            self._raw[key] = (self.session.run(None, {"images": x})[0][0], orig_hw)
        return self._raw[key]

    def detect(self, encoded: bytes, conf=0.25, iou=0.45, max_det=300, **options):
        pred, orig_hw = self.raw(encoded)
        return ref_detect(pred, orig_hw, self.input_hw, conf, iou, max_det, self.fit, **options)


class RectReference:
    """detect.py's default path on an ONNX with dynamic height and width: letterbox(auto=True) to the stride, the
    network on that canvas, scale_coords from the canvas's shape. ``canvas_hw`` forces a canvas instead (the
    official letterbox auto=False onto it, for images whose own canvas the server pads further)."""

    def __init__(self, onnx_path, new_shape: int):
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.new_shape = new_shape

    def canvas_and_input(self, encoded: bytes, canvas_hw=None):
        img = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
        boxed = ref_letterbox(img, canvas_hw) if canvas_hw else ref_letterbox_auto(img, self.new_shape)[0]
        x = np.ascontiguousarray(boxed[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        return boxed.shape[:2], x, img.shape[:2]

    def detect(self, encoded: bytes, conf=0.25, iou=0.45, max_det=300, canvas_hw=None):
        canvas, x, orig_hw = self.canvas_and_input(encoded, canvas_hw)
        pred = self.session.run(None, {"images": x})[0][0]
        return ref_detect(pred, orig_hw, canvas, conf, iou, max_det)

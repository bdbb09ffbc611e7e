"""MTCNN face detection (Zhang et al. 2016) as facenet-pytorch runs it, without importing facenet-pytorch.

The three networks and the detection pipeline follow facenet-pytorch 2.6 (MIT licence) and load its
pretrained weights (``pnet.pt``, ``rnet.pt``, ``onet.pt`` in the installed package's ``data`` folder,
found with ``importlib.util.find_spec`` so the package is never imported). Importing facenet-pytorch
imports torchvision, whose ``ops`` import ``torch._dynamo``: seconds of CPU in every worker process
before its first video (docs/preprocessing.md). The non-maximum suppressions here reproduce
torchvision's ``batched_nms`` (both its paths) and facenet's ``batched_nms_numpy``, so the detections
equal facenet-pytorch's ``MTCNN.detect`` bit for bit with channels-first nets
(``tests/pipeline/preprocess/test_face_track.py`` compares them on real frames).

``detect`` is ``detect_face`` rearranged for speed on one CPU core (see its docstring).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

THRESHOLDS = (0.6, 0.7, 0.7)  # PNet, RNet, ONet face probabilities (facenet's defaults)
SCALE_FACTOR = 0.709  # image pyramid step


def weights_dir() -> Path:
    """facenet-pytorch's ``data`` folder, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MTCNN weights come with facenet-pytorch, which is not installed: "
            "pip install --no-deps facenet-pytorch==2.6.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class PNet(nn.Module):
    """Proposal net, fully convolutional: (N, 3, H, W) in [-1, 1) -> box offsets (N, 4, h, w), face
    probabilities (N, 2, h, w) on a 2 px grid of 12 px windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box offsets (N, 4), face probabilities (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # the weights' (w, h, c) flattening order
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box offsets (N, 4), 5 facial points (N, 10), probabilities (N, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


class Mtcnn:
    """The three nets with facenet-pytorch's weights, on CPU, and the smallest face size searched for."""

    def __init__(self, min_face_size: int = 20) -> None:
        self.min_face_size = min_face_size
        self.thresholds = THRESHOLDS
        self.factor = SCALE_FACTOR
        self.pnet, self.rnet, self.onet = _nets()


@functools.lru_cache(maxsize=1)
def _nets() -> tuple[PNet, RNet, ONet]:
    folder = weights_dir()
    nets = []
    for net in (PNet(), RNet(), ONet()):
        path = folder / f"{type(net).__name__.lower()}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"MTCNN weights not found at {path}; reinstall facenet-pytorch==2.6.0")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        nets.append(net.eval().requires_grad_(False))
    return tuple(nets)


# ---------------------------------------------------------------------------------------------------
# Box helpers, as facenet-pytorch's models/utils/detect_face.py has them.


def fixed_batch_process(im_data: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """The net on batches of 512: (K, 3, s, s) -> the net's outputs for all K."""
    out = [model(im_data[i : i + 512]) for i in range(0, len(im_data), 512)]
    return tuple(torch.cat(v, dim=0) for v in zip(*out))


def generate_bounding_box(reg: torch.Tensor, probs: torch.Tensor, scale: float, thresh: float):
    """PNet's grid cells above ``thresh`` -> boxes (K, 9) [x0, y0, x1, y1, score, 4 offsets] in the
    image's pixels, and their image indices (K,)."""
    stride, cellsize = 2, 12
    reg = reg.permute(1, 0, 2, 3)
    mask = probs >= thresh
    mask_inds = mask.nonzero()
    image_inds = mask_inds[:, 0]
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    bb = mask_inds[:, 1:].type(reg.dtype).flip(1)
    q1 = ((stride * bb + 1) / scale).floor()
    q2 = ((stride * bb + cellsize - 1 + 1) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), image_inds


def bbreg(boundingbox: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Applies box regression offsets (K, 4) to boxes (K, >=4), in place."""
    if reg.shape[1] == 1:
        reg = torch.reshape(reg, (reg.shape[2], reg.shape[3]))
    w = boundingbox[:, 2] - boundingbox[:, 0] + 1
    h = boundingbox[:, 3] - boundingbox[:, 1] + 1
    b1 = boundingbox[:, 0] + reg[:, 0] * w
    b2 = boundingbox[:, 1] + reg[:, 1] * h
    b3 = boundingbox[:, 2] + reg[:, 2] * w
    b4 = boundingbox[:, 3] + reg[:, 3] * h
    boundingbox[:, :4] = torch.stack([b1, b2, b3, b4]).permute(1, 0)
    return boundingbox


def rerec(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (K, >=4) made square around their centres (side = the longer one), in place."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = torch.max(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side.repeat(2, 1).permute(1, 0)
    return boxes


def pad(boxes: torch.Tensor, w: int, h: int) -> tuple[np.ndarray, ...]:
    """Box corners truncated to ints and clipped to a w x h image: (y, ey, x, ex) int32, 1-based first
    row / column and inclusive last."""
    boxes = boxes.trunc().int().cpu().numpy()
    x, y, ex, ey = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    x[x < 1] = 1
    y[y < 1] = 1
    ex[ex > w] = w
    ey[ey > h] = h
    return y, ey, x, ex


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision.ops.nms on CPU: boxes (K, 4) float32 [x0, y0, x1, y1], scores (K,) -> kept indices
    (int64) by decreasing score; a box is dropped when its IoU with a kept, higher-scoring one exceeds
    the threshold. Same order (stable sort), same float32 arithmetic, same comparison in double."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    order = scores.sort(stable=True, descending=True)[1].numpy()
    x0, y0, x1, y1 = (np.ascontiguousarray(c) for c in boxes.numpy()[order].T)
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(order), bool)
    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = slice(i + 1, None)
            w = np.maximum(np.float32(0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
            h = np.maximum(np.float32(0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
            inter = w * h
            overlap = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest] |= overlap.astype(np.float64) > iou_threshold
    return torch.from_numpy(order[keep])


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float):
    """torchvision.ops.batched_nms on CPU (NMS within each idxs group), with both of its strategies:
    one NMS over boxes offset per group up to 4000 coordinates, one NMS per group above."""
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for class_id in torch.unique(idxs):
            current = torch.where(idxs == class_id)[0]
            keep_mask[current[nms(boxes[current], scores[current], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def batched_nms_min(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float):
    """facenet's ``batched_nms_numpy(..., "Min")``: NMS within each group by the intersection over the
    smaller box (+1 pixel box sizes), on offset boxes -> kept indices (int64)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    b = (boxes + offsets[:, None]).numpy()
    s = scores.numpy()
    x1, y1, x2, y2 = (b[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s)
    pick = []
    while order.size > 0:
        i = order[-1]
        pick.append(i)
        idx = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        order = order[np.where(w * h / np.minimum(area[i], area[idx]) <= threshold)]
    return torch.as_tensor(np.asarray(pick, np.int16), dtype=torch.long)


# ---------------------------------------------------------------------------------------------------
# Detection.


def detect(mtcnn: Mtcnn, images: np.ndarray, channels_last: bool = True) -> list[np.ndarray]:
    """facenet-pytorch's ``detect_face`` and ``MTCNN.detect`` (keep_all, largest first, no landmarks),
    rearranged for speed on one CPU core: images (N, H, W, 3) uint8 -> per image (F, 5) float32
    [x0, y0, x1, y1, prob], sorted by decreasing box area.

    Two changes that cut its CPU time (docs/preprocessing.md has the numbers):
    - Area resampling (the image pyramid and the 24 / 48 px crops of every candidate box for RNet /
      ONet; facenet calls ``interpolate(mode="area")`` once per box, for hundreds of boxes a frame)
      is read off one summed-area table of the uint8 images (``area_resample``): bit-identical, as
      the window sums of integer pixels are exact either way and the division is the same.
    - The nets see channels-last inputs, so every layer runs in that layout, where torch's CPU max
      pooling (channels-first, ``max_pool2d_with_indices`` dominates) and convolutions are faster. The
      pools are exact; the convolutions sum in another order, which moves the nets' outputs by rounding
      error (``tests/pipeline/preprocess/test_face_track.py`` holds boxes to 0.01 px and probabilities
      to 1e-4 of facenet's; a candidate scoring within rounding of a stage threshold could flip).
    Boxes whose crop is empty are dropped before RNet / ONet (facenet would fail on them). With
    ``channels_last=False`` the nets run channels-first and the result is facenet's, bit for bit.
    """
    num, h, w = images.shape[:3]
    table = summed_area_table(images)
    threshold, pnet, rnet, onet = mtcnn.thresholds, mtcnn.pnet, mtcnn.rnet, mtcnn.onet

    # Scale pyramid, as facenet's: the first level makes a min_face_size face 12 px.
    m = 12.0 / mtcnn.min_face_size
    minl = min(h, w) * m
    scale_i, scales = m, []
    while minl >= 12:
        scales.append(scale_i)
        scale_i = scale_i * mtcnn.factor
        minl = minl * mtcnn.factor

    # First stage: PNet on every level; NMS within each level and image, then within each image.
    all_images = np.arange(num)
    boxes, image_inds, scale_picks, offset = [], [], [], 0
    for scale in scales:
        hs, ws = int(h * scale + 1), int(w * scale + 1)
        rows = np.broadcast_to(area_bounds(np.zeros(1, np.int64), np.full(1, h), hs), (num, hs, 2))
        cols = np.broadcast_to(area_bounds(np.zeros(1, np.int64), np.full(1, w), ws), (num, ws, 2))
        reg, probs = pnet(area_resample(table, all_images, rows, cols, channels_last))
        boxes_scale, image_inds_scale = generate_bounding_box(reg, probs[:, 1], scale, threshold[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]
    boxes, image_inds = torch.cat(boxes, dim=0), torch.cat(image_inds, dim=0)
    scale_picks = torch.cat(scale_picks, dim=0)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    boxes = rerec(torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0))

    # Second stage: RNet on 24 px crops of the candidates.
    if len(boxes) > 0:
        boxes, image_inds, im_data = crops(table, boxes, image_inds, 24, channels_last)
    if len(boxes) > 0:
        out = fixed_batch_process(im_data, rnet)
        score = out[1][:, 1]
        ipass = score > threshold[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, mv = image_inds[ipass], out[0][ipass]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))

    # Third stage: ONet on 48 px crops; NMS by the overlap relative to the smaller box.
    if len(boxes) > 0:
        boxes, image_inds, im_data = crops(table, boxes, image_inds, 48, channels_last)
    if len(boxes) > 0:
        out = fixed_batch_process(im_data, onet)
        score = out[2][:, 1]
        ipass = score > threshold[2]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds, mv = image_inds[ipass], out[0][ipass]
        boxes = bbreg(boxes, mv)
        pick = batched_nms_min(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes, image_inds = boxes.numpy(), image_inds.numpy()
    detected = []
    for i in range(num):
        box = boxes[image_inds == i]
        order = np.argsort((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[::-1]
        detected.append(np.asarray(box[order], np.float32).reshape(-1, 5))
    return detected


def summed_area_table(images: np.ndarray) -> np.ndarray:
    """images (N, H, W, 3) uint8 -> (N, H + 1, W + 1, 3) int32 summed-area table: [n, y, x] = sum of
    images[n, :y, :x] per channel (exact up to 8.4 Mpx frames)."""
    return np.stack([cv2.integral(image, sdepth=cv2.CV_32S) for image in images])


def area_bounds(start: np.ndarray, length: np.ndarray, size: int) -> np.ndarray:
    """Source windows of area resampling ``length`` pixels from ``start`` to ``size`` pixels, as torch's
    adaptive average pooling takes them: start, length (K,) int -> (K, size, 2) [first, end) pixels."""
    o = np.arange(size)
    first = start[:, None] + o * length[:, None] // size
    end = start[:, None] - (-(o + 1) * length[:, None] // size)  # ceil division
    return np.stack([first, end], -1)


def area_resample(
    table: np.ndarray, image: np.ndarray, rows: np.ndarray, cols: np.ndarray, channels_last: bool = True
) -> torch.Tensor:
    """Area-resampled image regions, scaled to [-1, 1) as MTCNN's nets expect: table (N, H + 1, W + 1, C)
    from ``summed_area_table``, image (K,) int, rows (K, h, 2) and cols (K, w, 2) from ``area_bounds``
    -> (K, C, h, w) float32, channels-last (or contiguous).

    Bit-identical to ``interpolate(mode="area")`` (adaptive average pooling) of the float image: its
    float32 window sums of integers are exact (below 2^24, i.e. windows under 65k pixels), as are these,
    and it divides in float32 by the window height, then width, as here.
    """
    _, height, width, channels = table.shape
    pixels = table.reshape(-1, channels)  # corners are looked up by their index in here
    row_start = image[:, None, None] * (height * width) + rows * width  # (K, h, 2)
    y0, y1 = row_start[:, :, None, 0], row_start[:, :, None, 1]
    x0, x1 = cols[:, None, :, 0], cols[:, None, :, 1]
    corner = lambda index: np.take(pixels, index, axis=0)  # noqa: E731
    sums = corner(y1 + x1) - corner(y0 + x1) - corner(y1 + x0) + corner(y0 + x0)  # (K, h, w, C)
    rows_px = (rows[..., 1] - rows[..., 0]).astype(np.float32)[:, :, None, None]
    cols_px = (cols[..., 1] - cols[..., 0]).astype(np.float32)[:, None, :, None]
    mean = sums.astype(np.float32) / rows_px / cols_px
    mean = torch.from_numpy((mean - np.float32(127.5)) * np.float32(0.0078125)).permute(0, 3, 1, 2)
    return mean if channels_last else mean.contiguous()


def crops(
    table: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor, size: int, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The boxes (B, 5) of images image_inds (B,) cut out as facenet does (corners truncated to ints
    and clipped to the image) and area-resampled to size x size: -> kept boxes (K, 5), image_inds (K,)
    and crops (K, 3, size, size) (K < B only when a box's crop is empty)."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    y, ey, x, ex = pad(boxes, w, h)  # 1-based first row / column, last (inclusive), as int32
    keep = (ey > y - 1) & (ex > x - 1)
    if not keep.all():
        keep_t = torch.from_numpy(keep)
        boxes, image_inds = boxes[keep_t], image_inds[keep_t]
        y, ey, x, ex = y[keep], ey[keep], x[keep], ex[keep]
    y0, x0 = y.astype(np.int64) - 1, x.astype(np.int64) - 1
    rows = area_bounds(y0, ey - y0, size)
    cols = area_bounds(x0, ex - x0, size)
    return boxes, image_inds, area_resample(table, image_inds.numpy(), rows, cols, channels_last)

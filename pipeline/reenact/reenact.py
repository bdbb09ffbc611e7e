"""Reenactment of one source video onto one person (paper section 3.2): the batch path.

1. The source video is reconstructed with the preprocessing's own code (``reconstruct_video``: track,
   crops, 68 landmarks, the per-video 3DMM fit): its expressions and cameras per frame.
2. Its expressions drive the person's 3DMM identity; its head pose is carried over to the person's framing
   (``conditioning.adapt_pose``), or the person's own head poses are kept (``mode: expression``); NMFC
   images are rendered at the person's generator size.
3. The person's generator synthesises the frames one after another (``synthesis.StreamingSynthesizer``, in
   chunks whose state carries over: no seam), and its foreground is composited over the chosen background:
   the person's mean background, an image, or a colour.
4. The result is written as an H.264 mp4 with the source's audio, marked as synthetic in the file's
   metadata (tool, version, person model, source) and, unless switched off, with a visible mark; optionally
   side by side with the source crop and the NMFC images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Literal

import cv2
import numpy as np
import torch

from infra import storage
from model.face3d.loader import load_morphable_model
from pipeline import media
from pipeline.evaluate.identity_features import identity_features, identity_similarity
from pipeline.finetune.person_model import PersonModel, load_person_model
from pipeline.preprocess.chain import LocalCopy
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer
from pipeline.preprocess.reconstruct import ReconstructConfig, reconstruct_video
from pipeline.reenact.canvas import TargetCanvas, canvas_source, load_canvas, paste
from pipeline.reenact.conditioning import (
    FaceParams,
    PoseAdaptConfig,
    ping_pong_indices,
    pose_outside_range,
    reenactment_parameters,
    rescale_cameras,
)
from pipeline.reenact.stream import StreamConfig, frames_from, run_stream
from pipeline.reenact.synthesis import StreamingSynthesizer

WATERMARK = "SYNTHETIC"


@dataclass(frozen=True)
class PairsConfig:
    """Many (source, target) pairs on Ray (``ray_reenact``).

    address: a Ray cluster (``RAY_ADDRESS`` works too); none starts a local one.
    cpus_per_pair / gpus_per_pair: each pair's task resources (a GPU fraction lets pairs share a GPU).
    """

    address: str | None = None
    cpus_per_pair: float = 1.0
    gpus_per_pair: float = 0.0


@dataclass(frozen=True)
class ReenactConfig:
    """How a source drives a person.

    mode: ``full`` carries the source's head pose over (adapted to the person's framing), ``expression``
        keeps the person's own head poses (their training frames', played forwards and backwards).
    background: ``target`` (the person's own video, or their mean background), a colour name or ``#rrggbb``,
        or an image URI.
    canvas: with ``background: target``, ``target_video`` blends the faces back into the full-resolution
        frames of the person's own video (``canvas.py``; the crop when that video cannot be read),
        ``crop`` writes the face crop over the person's mean background.
    feather: the width of the blended border, as a share of the crop's side.
    side_by_side: write source crop | NMFC | result side by side.
    output_px: side of the written crops (the generator's frames are resized to it); a canvas keeps its
        video's size.
    chunk_frames: frames rendered and synthesised per chunk (bounds memory; the output is the same).
    crf: libx264's quality of the written video (0 lossless, 18 visually lossless).
    watermark: draw a visible "SYNTHETIC" mark in a corner (the file's metadata says so either way).
    precision: ``bf16`` autocasts the generator on CUDA.
    identity_check_frames: output frames (evenly spaced) whose face identity is compared with the person's
        key frame and with the source's face (dlib's face-recognition ResNet); 0 skips the check.
    pairs: resources of the many-pairs batch (``--pairs``).
    """

    mode: Literal["full", "expression"] = "full"
    background: str = "target"
    canvas: Literal["target_video", "crop"] = "target_video"
    feather: float = 0.12
    side_by_side: bool = False
    output_px: int = 256
    chunk_frames: int = 64
    crf: int = 18
    watermark: bool = True
    precision: Literal["bf16", "fp32"] = "bf16"
    identity_check_frames: int = 16
    source: ReconstructConfig = field(default_factory=ReconstructConfig)
    pose: PoseAdaptConfig = field(default_factory=PoseAdaptConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)


_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "green": (0, 177, 64), "grey": (128, 128, 128)}


def background_image(spec: str, person: PersonModel, size: int) -> np.ndarray:
    """The background (size, size, 3) uint8 RGB: ``target``, a colour name, ``#rrggbb`` or an image URI."""
    if spec == "target":
        image = person.statistics.background.numpy()
    elif spec in _COLOURS or re.fullmatch(r"#[0-9a-fA-F]{6}", spec):
        rgb = _COLOURS.get(spec) or tuple(int(spec[i : i + 2], 16) for i in (1, 3, 5))
        return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()
    else:
        data = np.frombuffer(storage.read_bytes(spec), np.uint8)
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if decoded is None:
            raise ValueError(
                f"--background {storage.redact(spec)}: not an image (or use target, a colour, #rrggbb)"
            )
        image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def mark(image: np.ndarray) -> np.ndarray:
    """The visible synthetic mark, bottom right: image (H, W, 3) uint8 -> a marked copy."""
    out = np.ascontiguousarray(image).copy()
    scale = max(out.shape[0] / 512, 0.35)
    (w, h), _ = cv2.getTextSize(WATERMARK, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    origin = (out.shape[1] - w - 4, out.shape[0] - 4)
    cv2.putText(out, WATERMARK, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, WATERMARK, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    del h
    return out


def provenance_metadata(person_uri: str, source_uri: str, cfg: ReenactConfig) -> dict[str, str]:
    """The container metadata that marks an output as synthetic."""
    try:
        version = metadata.version("head2head")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "title": "synthetic video (head reenactment)",
        "comment": f"SYNTHETIC: generated by head2head {version}; not a recording of the person shown",
        "synthetic": "true",
        "tool": f"head2head {version}",
        "target_model": storage.redact(person_uri),
        "source": storage.redact(source_uri),
        "mode": cfg.mode,
    }


def reenact(
    source_uri: str,
    person_uri: str,
    out_uri: str,
    cfg: ReenactConfig = ReenactConfig(),
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Writes the person in ``person_uri`` driven by the video ``source_uri`` to ``out_uri`` (mp4); returns
    a summary (frames, fps, size, synthesis frames/s, identity similarities, seconds per stage)."""
    device = torch.device(device)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    person = load_person_model(person_uri, device)
    model = load_morphable_model(cfg.source.model.path)
    with contextlib.ExitStack() as stack:
        source_path = stack.enter_context(LocalCopy(source_uri))
        keep_crops = cfg.side_by_side or cfg.identity_check_frames > 0  # shown / compared below
        recon = reconstruct_video(source_path, model, cfg.source, keep_crops)
        seconds.update(recon.seconds)
        t0 = time.perf_counter()
        canvas = _canvas(person, model, cfg, stack, log)
        seconds["canvas_s"] = time.perf_counter() - t0

        # Condition: the person's identity, the source's expressions, the adapted pose, at the person's size.
        size = int(person.info["image_px"])
        stats = person.statistics
        cameras = stats.cameras.double()
        if canvas is not None:  # the canvas video's own cameras, so that its frames and the head agree
            canvas_cameras = torch.tensor(canvas.cameras)
            cameras = rescale_cameras(canvas_cameras, canvas.track.crop_size, stats.crop_px)
        target = FaceParams(
            identity=stats.identity_coefficients,
            expression=torch.zeros(len(cameras), model.n_expression),
            camera=cameras,
        )
        source = FaceParams(
            identity=torch.tensor(recon.fit.identity),
            expression=torch.tensor(recon.fit.expression),
            camera=torch.tensor(recon.fit.camera).double(),
        )
        source_px = recon.landmarks.crop_size
        # Pose adaptation works in the person's crop pixels; the source's cameras are scaled to them first.
        source = source._replace(camera=rescale_cameras(source.camera, source_px, stats.crop_px))
        pose_mode = "target_pose" if cfg.mode == "expression" else "source_pose"
        pose = dataclasses.replace(cfg.pose, mode=pose_mode)
        # The pose is adapted over the whole source at once (its smoothing sees every frame).
        params = reenactment_parameters(target, source, pose)
        if cfg.mode == "full":
            warning = pose_outside_range(stats.pose, params.camera.numpy(), cfg.stream.pose_margin_deg)
            if warning:
                log(warning)
        renderer = NmfcRenderer(model, NmfcConfig(image_size=(size, size)), device=device)
        autocast = torch.bfloat16 if cfg.precision == "bf16" else None
        synthesizer = StreamingSynthesizer(person.generator, autocast)
        background = torch.from_numpy(background_image(cfg.background, person, size)).permute(2, 0, 1)
        background = background.float().to(device) / 127.5 - 1

        frame_count = len(params.expression)
        canvas_rows = ping_pong_indices(frame_count, len(canvas)).numpy() if canvas is not None else None
        checked = np.linspace(0, frame_count - 1, min(cfg.identity_check_frames, frame_count)).round()
        samples: dict[int, np.ndarray] = dict.fromkeys(checked.astype(int).tolist())
        crops = recon.landmarks.crops
        fps = recon.landmarks.fps or 25.0
        marks = provenance_metadata(person_uri, source_uri, cfg)
        writer = media.VideoWriter(out_uri, fps=fps, audio_from=source_path, metadata=marks, crf=cfg.crf)
        video = stack.enter_context(writer)
        t_render = t_synth = t_write = 0.0
        for first in range(0, frame_count, cfg.chunk_frames):
            chunk = slice(first, first + cfg.chunk_frames)
            t0 = time.perf_counter()
            camera = rescale_cameras(params.camera[chunk].double(), stats.crop_px, size).float()
            identity, expression = params.identity[chunk], params.expression[chunk]
            images = renderer.render(identity, expression, camera, uint8=True).image  # (t, H, W, 3)
            nmfc = images.permute(0, 3, 1, 2).float() / 127.5 - 1
            t1 = time.perf_counter()
            generated, masks = synthesizer.run(nmfc)
            t2 = time.perf_counter()
            t_render, t_synth = t_render + t1 - t0, t_synth + t2 - t1
            full_frames = canvas.frames(canvas_rows[chunk]) if canvas is not None else None
            behind = background
            if canvas is not None and cfg.mode == "expression":  # the canvas frame's own crop shows behind
                rows = canvas_rows[chunk]
                behind_crops = np.stack([canvas.crop(f, r, size) for f, r in zip(full_frames, rows)])
                behind = torch.from_numpy(behind_crops).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
            composite = masks * generated + (1 - masks) * behind
            for k in range(len(composite)):
                t = first + k
                face = media.generator_images(composite[k])
                if canvas is not None:
                    crop_px = canvas.track.crop_size
                    face = _resize(face, crop_px)
                    matrix = canvas.crop_matrix(int(canvas_rows[t]), crop_px)
                    frame = paste(full_frames[k], face, matrix, cfg.feather)
                else:
                    frame = _resize(face, cfg.output_px)
                if t in samples:
                    samples[t] = _resize(media.generator_images(composite[k]), cfg.output_px)
                if cfg.watermark:
                    frame = mark(frame)
                if cfg.side_by_side:
                    height = frame.shape[0]
                    condition = media.generator_images(nmfc[k])
                    frame = np.concatenate([_resize(crops[t], height), _resize(condition, height), frame], 1)
                video.write(frame)
            t_write += time.perf_counter() - t2
        seconds.update(render_s=t_render, synthesis_s=t_synth, composite_write_s=t_write)
        t0 = time.perf_counter()
        whose_face = identity_check(samples, crops, person) if samples else {}
        seconds["identity_check_s"] = time.perf_counter() - t0
        size_written = list(video.size or ())
    summary = {
        "frames": frame_count,
        "fps": fps,
        "size": size_written,
        "canvas": storage.redact(canvas.source) if canvas is not None else "crop",
        "synthesis_frames_per_s": round(frame_count / max(t_synth, 1e-9), 2),
        **whose_face,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "total_s": round(time.perf_counter() - start, 3),
        "out": storage.redact(out_uri),
    }
    log(
        f"reenacted {summary['frames']} frames of {storage.redact(source_uri)} onto {person.identity}: "
        f"synthesis {summary['synthesis_frames_per_s']} frames/s -> {summary['out']}"
    )
    return summary


def _canvas(
    person: PersonModel, model, cfg: ReenactConfig, stack: contextlib.ExitStack, log: Callable[[str], None]
) -> TargetCanvas | None:
    """The person's video to blend into, when the settings ask for it and it can be read."""
    if cfg.canvas != "target_video" or cfg.background != "target":
        return None
    source = canvas_source(person)
    if source is None:
        log(f"warning: none of {person.identity}'s videos can be read any more; writing the crop instead")
        return None
    path = stack.enter_context(LocalCopy(source))
    return load_canvas(path, source, model, cfg.source)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def identity_check(
    generated: dict[int, np.ndarray], source_crops: np.ndarray, person: PersonModel
) -> dict[str, float | str]:
    """Whose face the output shows: the mean identity cosine of output frames {index: (P, P, 3) uint8} to
    the person's key frame and to the source's crops at the same frames (a cross-identity reenactment
    should be near the person and far from the source)."""
    indices = sorted(generated)
    size = generated[indices[0]].shape[0]
    output = identity_features(np.stack([generated[i] for i in indices]))
    source = identity_features(np.stack([_resize(source_crops[i], size) for i in indices]))
    key = identity_features(_resize(person.statistics.key_frame.numpy(), size)[None])
    return {
        "identity_cosine_to_target": round(identity_similarity(output, key).mean_cosine, 4),
        "identity_cosine_to_source": round(identity_similarity(output, source).mean_cosine, 4),
        "identity_estimator": output.estimator,
    }


def reenact_stream(
    source: str,
    person_uri: str,
    out_uri: str,
    cfg: ReenactConfig = ReenactConfig(),
    realtime: bool = True,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """The streaming path (``stream.run_stream``) from a webcam index, a stream URL or a file (played at
    its frame rate when ``realtime``) into an mp4, marked like the batch path's; returns its timing."""
    person = load_person_model(person_uri, device)
    model = load_morphable_model(cfg.source.model.path)
    capture_fps = cv2.VideoCapture(int(source) if source.isdigit() else source).get(cv2.CAP_PROP_FPS) or 25.0
    marks = provenance_metadata(person_uri, source, cfg)
    with media.VideoWriter(out_uri, fps=capture_fps, metadata=marks, crf=cfg.crf) as video:

        def sink(crop: np.ndarray, nmfc: np.ndarray, result: np.ndarray) -> None:
            frame = _resize(result, cfg.output_px)
            frame = mark(frame) if cfg.watermark else frame
            if cfg.side_by_side:
                frame = np.concatenate([_resize(crop, cfg.output_px), _resize(nmfc, cfg.output_px), frame], 1)
            video.write(frame)

        summary = run_stream(frames_from(source, realtime), person, model, cfg.stream, device, sink, log)
    log(
        f"streamed {summary['frames']} frames onto {person.identity}: {summary['frames_per_s']} frames/s, "
        f"latency {summary['latency_ms_mean']} ms (p95 {summary['latency_ms_p95']}) "
        f"-> {storage.redact(out_uri)}"
    )
    return summary

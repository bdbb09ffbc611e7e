"""Reenactment with a tiny person model on a shared clip: a playable, marked mp4 with the source's audio,
the side-by-side layout, and no seam where chunks meet."""

from __future__ import annotations

import av
import cv2
import decord
import numpy as np
import pytest
import torch

from model.networks.generator import generate_sequence
from pipeline.finetune.person_model import load_person_model, person_model_uri
from pipeline.preprocess.decode import DecodeConfig
from pipeline.preprocess.landmarks import landmarks_for_video
from pipeline.reenact.reenact import ReenactConfig, identity_check, reenact
from pipeline.reenact.synthesis import StreamingSynthesizer

FRAMES = 30
SOURCE = "sadtalker_WDA_KatieHill_000"  # has an audio track


def _config(**changes) -> ReenactConfig:
    from infra.config import load_config

    overrides = [f"source.decode.max_frames={FRAMES}", "output_px=64", "canvas=crop"]
    cfg = load_config(ReenactConfig, None, overrides)
    return ReenactConfig(**{**cfg.__dict__, **changes})


def test_streaming_synthesis_in_chunks_equals_one_pass(tiny_person):
    """Frame t of a video synthesised in chunks of any size, or one frame at a time, equals frame t of one
    uninterrupted pass of the training-time sequence (``generate_sequence``), bitwise on CPU."""
    people, person, _ = tiny_person
    generator = load_person_model(person_model_uri(people, person)).generator
    torch.manual_seed(0)
    nmfc = torch.rand(23, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = generate_sequence(generator, nmfc[None], None).frame[0]
    for chunk in (1, 5, 23):
        synthesizer = StreamingSynthesizer(generator)
        frames = torch.cat([synthesizer.run(nmfc[k : k + chunk])[0] for k in range(0, len(nmfc), chunk)])
        assert torch.equal(frames, reference), chunk


def test_identity_check_tells_the_source_from_the_person(tiny_person, shared_videos):
    """Output frames that are the source's own crops are the source's face; the person's key frame is the
    person's (the similarities a reenactment prints come from this)."""
    people, person, _ = tiny_person
    model = load_person_model(person_model_uri(people, person))
    video = str(shared_videos / f"{SOURCE}.mp4")
    crops = landmarks_for_video(video, DecodeConfig(max_frames=8), keep_crops=True).crops  # (8, S, S, 3)
    key = model.statistics.key_frame.numpy()
    size = 128
    as_source = identity_check({t: cv2.resize(crops[t], (size, size)) for t in (0, 3)}, crops, model)
    as_person = identity_check({t: cv2.resize(key, (size, size)) for t in (0, 3)}, crops, model)
    assert as_source["identity_cosine_to_source"] > 0.95 > as_source["identity_cosine_to_target"]
    assert as_person["identity_cosine_to_target"] > 0.95 > as_person["identity_cosine_to_source"]


def test_reenactment_writes_a_playable_marked_video(tiny_person, shared_videos, tmp_path):
    people, person, _ = tiny_person
    source = str(shared_videos / f"{SOURCE}.mp4")
    model = person_model_uri(people, person)
    out = tmp_path / "out.mp4"
    summary = reenact(source, model, str(out), _config(side_by_side=True, chunk_frames=7))
    assert summary["frames"] == FRAMES and summary["synthesis_frames_per_s"] > 0
    # Whose face it shows, by dlib's face-recognition network: both similarities are reported.
    assert summary["identity_estimator"] == "dlib_resnet_v1"
    assert -1 <= summary["identity_cosine_to_target"] <= 1 and -1 <= summary["identity_cosine_to_source"] <= 1

    reader = decord.VideoReader(str(out))
    assert len(reader) == FRAMES and reader[0].shape == (64, 3 * 64, 3)  # source | NMFC | result
    with av.open(str(out)) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == pytest.approx(25.0)
        assert [s.type for s in video.streams] == ["video", "audio"]  # the source's audio is kept
        assert video.metadata["synthetic"] == "true" and "SYNTHETIC" in video.metadata["comment"]
        assert video.metadata["target_model"] == model
    # Chunks do not change the output: one chunk writes the same frames. Compared losslessly encoded:
    # libx264 is not bit-reproducible here (the same frames encoded twice at crf 18 can decode a few grey
    # levels apart), and lossless decodes give back exactly the frames written.
    chunked, single = tmp_path / "chunked.mp4", tmp_path / "single.mp4"
    reenact(source, model, str(chunked), _config(chunk_frames=7, crf=0, identity_check_frames=0))
    reenact(source, model, str(single), _config(chunk_frames=1000, crf=0, identity_check_frames=0))
    one_pass, in_chunks = (decord.VideoReader(str(v))[:].asnumpy() for v in (single, chunked))
    assert len(one_pass) == FRAMES and np.array_equal(one_pass, in_chunks)
    # The visible mark: the same video without it differs in the bottom-right corner; elsewhere only by the
    # encoder's different bit allocation (a few grey levels on average, single pixels up to ~30 on a noisy
    # tiny-model face).
    plain = tmp_path / "plain.mp4"
    reenact(source, model, str(plain), _config(watermark=False, background="black", identity_check_frames=0))
    marked = tmp_path / "marked.mp4"
    reenact(source, model, str(marked), _config(background="black", identity_check_frames=0))
    a = decord.VideoReader(str(plain))[5].asnumpy().astype(int)
    b = decord.VideoReader(str(marked))[5].asnumpy().astype(int)
    difference = np.abs(a - b).sum(-1)
    assert (difference[-16:, -48:] > 30).any() and difference[:32, :32].mean() < 3 * 3


@pytest.mark.parametrize("mode", ["expression", "full"])
def test_faces_are_blended_into_the_person_s_own_video(tiny_person, shared_videos, ict_model, tmp_path, mode):
    """The canvas: frames of the person's own video at full resolution, synthesised inside the face crop
    and untouched outside it."""
    from pipeline.reenact.canvas import load_canvas

    people, person, _ = tiny_person
    out = tmp_path / "canvas.mp4"
    cfg = _config(canvas="target_video", mode=mode, identity_check_frames=0, watermark=False)
    summary = reenact(str(shared_videos / f"{SOURCE}.mp4"), person_model_uri(people, person), str(out), cfg)
    target_path = str(shared_videos / f"{person}.mp4")
    assert summary["canvas"] == target_path
    canvas = load_canvas(target_path, target_path, ict_model, cfg.source)
    written = decord.VideoReader(str(out)).get_batch([0, 10]).asnumpy().astype(int)
    original = decord.VideoReader(target_path).get_batch(canvas.track.frame_index[[0, 10]].tolist())
    original = original.asnumpy().astype(int)
    assert written.shape == original.shape == (2, 512, 512, 3)  # the person's video's size
    for k, row in enumerate((0, 10)):
        edge = canvas.track.crop_size - 0.5
        corners = np.array([[[-0.5, -0.5], [edge, edge]]])  # the crop's outer pixel edges
        (x0, y0), (x1, y1) = canvas.track.crop_to_frame(corners, np.array([row]))[0]
        outside = np.ones((512, 512), bool)
        outside[max(int(y0) - 2, 0) : int(y1) + 3, max(int(x0) - 2, 0) : int(x1) + 3] = False
        inner = np.zeros((512, 512), bool)
        cx, cy, q = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4
        inner[int(cy - q) : int(cy + q), int(cx - q) : int(cx + q)] = True
        difference = np.abs(written[k] - original[k]).mean(-1)
        if outside.any():
            assert difference[outside].mean() < 4, k  # the video itself (up to H.264)
        assert difference[inner].mean() > 8, k  # the synthesised face

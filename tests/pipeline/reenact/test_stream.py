"""The streaming path: a file processed as a stream, and its per-frame fits against the batch fit."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from model.face3d.camera import PITCH, ROLL, SCALE, TX, TY
from pipeline.finetune.person_model import load_person_model, person_model_uri
from pipeline.preprocess.fit_3dmm import fit_config_for
from pipeline.preprocess.reconstruct import ReconstructConfig, reconstruct_video
from pipeline.reenact.online_fit import OnlineFitter
from pipeline.reenact.stream import StreamConfig, frames_from, run_stream

CLIP = "sadtalker_WDA_KatieHill_000"


def test_per_frame_fits_match_the_batch_fit(ict_model, shared_videos):
    """Fed the batch path's landmarks, the streaming fit (identity from the first 30 frames, then one
    frame at a time) stays within these bounds of the batch fit (which sees the whole clip and smooths
    over time): head angles 1.5 degrees on average and 4 at most, translation 2 px, scale 2%, expression
    coefficients 0.12 on average (they are in [0, 1])."""
    cfg = ReconstructConfig()
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, max_frames=90))
    batch = reconstruct_video(shared_videos / f"{CLIP}.mp4", ict_model, cfg)
    landmarks = np.asarray(batch.landmarks.landmarks_px, np.float64)
    fitter = OnlineFitter(ict_model, fit_config_for(cfg.fit, cfg.landmarks.backend))
    fitter.start(landmarks[:30])
    fits = [fitter.fit(frame) for frame in landmarks[30:]]
    expression = np.stack([e for e, _ in fits])
    camera = np.stack([c for _, c in fits])
    reference_e, reference_c = np.asarray(batch.fit.expression[30:]), np.asarray(batch.fit.camera[30:])
    angles = np.degrees(np.abs(camera[:, PITCH : ROLL + 1] - reference_c[:, PITCH : ROLL + 1]))
    assert angles.mean() < 1.5 and angles.max() < 4.0, angles.mean(0)
    assert np.abs(camera[:, [TX, TY]] - reference_c[:, [TX, TY]]).mean() < 2.0
    assert np.abs(camera[:, SCALE] / reference_c[:, SCALE] - 1).mean() < 0.02
    assert np.abs(expression - reference_e).mean() < 0.12


def test_a_file_processed_as_a_stream(tiny_person, ict_model, shared_videos):
    people, person, _ = tiny_person
    model = load_person_model(person_model_uri(people, person))
    frames = itertools.islice(frames_from(str(shared_videos / f"{CLIP}.mp4"), realtime=False), 40)
    outputs = []
    cfg = StreamConfig()
    summary = run_stream(frames, model, ict_model, cfg, sink=lambda *images: outputs.append(images))
    assert summary["frames"] == len(outputs) == 40  # the warm-up frames come out too, once it ends
    crop, nmfc, result = outputs[-1]
    assert crop.shape == (cfg.track.crop_size, cfg.track.crop_size, 3)
    assert result.shape == nmfc.shape == (32, 32, 3)
    assert summary["frames_per_s"] > 0 and summary["latency_ms_p95"] >= summary["latency_ms_mean"] > 0
    stages = {"track_ms", "landmarks_ms", "fit_ms", "nmfc_ms", "synthesis_ms"}
    assert set(summary["stage_ms_per_frame"]) == stages

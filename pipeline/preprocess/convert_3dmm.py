"""Conversion of a 3D morphable model to the open head2head-3dmm format, with a landmark preview.

Reads the packed ICT npz, an ICT-FaceKit OBJ folder or a head2head-3dmm npz (``model.face3d.loader``);
writes ``model.npz``, ``summary.json``, ``landmarks.png`` (front and side views of the mean face with its
68 landmarks) and the resolved ``config.yaml`` under an output folder (a local path or URI).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from infra import storage
from infra.config import save_config
from model.face3d.camera import make_camera, project_numpy
from model.face3d.loader import MorphableModelConfig, load_morphable_model
from model.face3d.morphable_model import save_morphable_model


@dataclass(frozen=True)
class ConvertConfig:
    model: MorphableModelConfig = field(default_factory=MorphableModelConfig)
    preview_size_px: int = 512


def draw_landmarks_preview(model, size_px: int) -> np.ndarray:
    """Front and side (yaw 60 degrees) views of the mean surface as points, landmarks in red.

    Returns an image (size_px, 2 * size_px, 3) uint8 RGB.
    """
    surface = model.mean[: model.surface_vertex_count]
    extent = np.ptp(surface[:, :2], axis=0).max()
    panels = []
    for yaw in (0.0, np.deg2rad(60.0)):
        camera = make_camera(yaw=yaw, tx=size_px / 2, ty=size_px / 2, scale=0.9 * size_px / extent)
        centred = surface - surface.mean(axis=0)
        verts_px = project_numpy(centred, camera)
        panel = np.full((size_px, size_px, 3), 255, np.uint8)
        order = np.argsort(verts_px[:, 2])  # far points first so near ones paint over them
        for x, y, depth in verts_px[order]:
            shade = int(np.clip(90 + 120 * (depth - verts_px[:, 2].min()) / np.ptp(verts_px[:, 2]), 0, 255))
            cv2.circle(panel, (int(round(x)), int(round(y))), 1, (shade, shade, shade), -1)
        for x, y, _ in verts_px[model.landmarks]:
            cv2.circle(panel, (int(round(x)), int(round(y))), 3, (220, 30, 30), -1)
        panels.append(panel)
    return np.concatenate(panels, axis=1)


def convert_3dmm(cfg: ConvertConfig, output: str) -> dict:
    """Writes the converted model, its preview, summary and config under ``output``; returns the summary."""
    model = load_morphable_model(cfg.model.path)
    buffer = io.BytesIO()
    save_morphable_model(model, buffer)
    storage.write_bytes(storage.join(output, "model.npz"), buffer.getvalue())
    preview = draw_landmarks_preview(model, cfg.preview_size_px)
    ok, png = cv2.imencode(".png", cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
    assert ok
    storage.write_bytes(storage.join(output, "landmarks.png"), png.tobytes())
    summary = {
        "name": model.name,
        "units": model.units,
        "vertices": model.n_vertices,
        "surface_vertices": model.surface_vertex_count,
        "surface_triangles": int(model.faces.shape[0]),
        "identity_modes": model.n_identity,
        "expressions": model.n_expression,
        "landmarks": int(model.landmarks.shape[0]),
    }
    storage.write_text(storage.join(output, "summary.json"), json.dumps(summary, indent=2))
    save_config(cfg, storage.join(output, "config.yaml"))
    return summary

"""ICT Face Model Light (ICT-VGL/ICT-FaceKit, MIT): import from its OBJ folder or from the packed npz.

A clone of ICT-FaceKit has ``FaceXModel/`` with ``generic_neutral_mesh.obj``, ``identity000.obj`` ...
``identity099.obj``, one OBJ per expression blendshape (``browDown_L.obj`` ...) and
``vertex_indices.json``. The packed ``ict_facekit_light.npz`` (see ``../shared/3dmm/README.md``) holds the
same data as float32 arrays. Both are turned into the same ``MorphableModel``:

- identity and expression bases are ``shape.obj - neutral`` (the OBJ text is parsed in float64, the
  difference is taken in float64 and stored as float32, as the packed file does);
- the expression set and order are ``vertex_indices.json["expressions"]`` (53 ARKit-style blendshapes,
  weights in [0, 1]); the folder's other OBJs (e.g. ``cheekRaiser_L``, ``PupilDilate_L``) are ignored;
- the visible surface is the ``Face`` and ``Head and Neck`` parts (vertices 0..11247), its quads split
  into two triangles each (a, b, c) + (a, c, d) with the OBJ's winding kept;
- landmarks are ``idx_to_landmark_verts`` of ``vertex_indices.json``; the jawline substitutes are the ones
  listed in ICT-FaceKit's README.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.face3d.morphable_model import MorphableModel

NAME = "ict-facekit-light"
N_IDENTITY = 100
# ICT-FaceKit README, "Face Model Topology": vertices 0..9408 are the face, 9409..11247 head and neck.
SURFACE_VERTEX_COUNT = 11248
# ICT-FaceKit README, "Facial Landmarks": jawline vertices that substitute Multi-PIE points 0-7 (right)
# and 9-16 (left), for the silhouette moving over the surface as the head turns.
JAW_RIGHT = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
JAW_LEFT = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
NEUTRAL_OBJ = "generic_neutral_mesh.obj"
VERTEX_INDICES_JSON = "vertex_indices.json"


def triangulate_surface(quads: np.ndarray, surface_vertex_count: int = SURFACE_VERTEX_COUNT) -> np.ndarray:
    """Triangles of the polygons lying wholly on the surface vertices.

    quads (P, 4) int, -1 as 4th id for triangles -> faces (F, 3) int32, quads split (a,b,c) + (a,c,d).
    """
    quads = np.asarray(quads)
    is_tri = quads[:, 3] < 0
    on_surface = np.where(is_tri, quads[:, :3].max(axis=1), quads.max(axis=1)) < surface_vertex_count
    polys = quads[on_surface]
    # (P, 2, 3): both halves of every polygon; boolean indexing keeps each quad's pair adjacent.
    halves = np.stack([polys[:, [0, 1, 2]], polys[:, [0, 2, 3]]], axis=1)
    keep = np.stack([np.ones(len(polys), bool), polys[:, 3] >= 0], axis=1)
    return halves[keep].astype(np.int32)


def _model(
    neutral: np.ndarray,
    identity_basis: np.ndarray,
    identity_names: tuple[str, ...],
    expression_basis: np.ndarray,
    expression_names: tuple[str, ...],
    quads: np.ndarray,
    landmarks: np.ndarray,
) -> MorphableModel:
    return MorphableModel(
        name=NAME,
        units="cm",
        mean=neutral.astype(np.float32),
        identity_basis=identity_basis.astype(np.float32),
        identity_names=identity_names,
        expression_basis=expression_basis.astype(np.float32),
        expression_names=expression_names,
        expression_bounds=np.tile(np.array([0.0, 1.0], np.float32), (len(expression_names), 1)),
        faces=triangulate_surface(quads),
        landmarks=np.asarray(landmarks, np.int32),
        jaw_right=np.array(JAW_RIGHT, np.int32),
        jaw_left=np.array(JAW_LEFT, np.int32),
        surface_vertex_count=SURFACE_VERTEX_COUNT,
    )


def from_packed(data) -> MorphableModel:
    """The model from the packed ``ict_facekit_light.npz`` (an opened NpzFile or a dict of its arrays)."""
    ranges = np.asarray(data["geometry_vertex_ranges"])
    if int(ranges[1, 1]) + 1 != SURFACE_VERTEX_COUNT:
        raise ValueError(f"unexpected ICT geometry ranges: head and neck end at {ranges[1, 1]}")
    return _model(
        neutral=np.asarray(data["neutral"]),
        identity_basis=np.asarray(data["identity_deltas"]),
        identity_names=tuple(str(n) for n in data["identity_names"]),
        expression_basis=np.asarray(data["expression_deltas"]),
        expression_names=tuple(str(n) for n in data["expression_names"]),
        quads=np.asarray(data["quads"]),
        landmarks=np.asarray(data["landmarks_multipie68"]),
    )


def read_obj_vertices(path: Path) -> np.ndarray:
    """The ``v x y z`` lines of an OBJ file; (V, 3) float64."""
    lines = [line[2:] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.array(" ".join(lines).split(), dtype=np.float64).reshape(-1, 3)


def read_obj_polygons(path: Path) -> np.ndarray:
    """The ``f`` lines of an OBJ file as 0-based vertex ids (P, 4) int32, -1 as 4th id for triangles."""
    polys = []
    for line in path.read_text().splitlines():
        if line.startswith("f "):
            ids = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
            if len(ids) not in (3, 4):
                raise ValueError(f"{path}: only triangles and quads are supported, got {len(ids)} ids")
            polys.append(ids + [-1] * (4 - len(ids)))
    return np.asarray(polys, dtype=np.int32)


def import_obj_folder(folder: str | Path) -> MorphableModel:
    """Imports ICT-FaceKit's ``FaceXModel`` folder (or the repository root containing it)."""
    folder = Path(folder)
    if (folder / "FaceXModel").is_dir():
        folder = folder / "FaceXModel"
    missing = [name for name in (NEUTRAL_OBJ, VERTEX_INDICES_JSON) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: not an ICT-FaceKit FaceXModel folder (missing {', '.join(missing)}); clone "
            "https://github.com/ICT-VGL/ICT-FaceKit and pass its FaceXModel folder"
        )
    indices = json.loads((folder / VERTEX_INDICES_JSON).read_text())
    neutral = read_obj_vertices(folder / NEUTRAL_OBJ)
    identity_names = tuple(f"identity{k:03d}" for k in range(N_IDENTITY))
    expression_names = tuple(indices["expressions"])

    def deltas(names: tuple[str, ...]) -> np.ndarray:
        out = np.empty((len(names), *neutral.shape), np.float32)
        for k, name in enumerate(names):
            path = folder / f"{name}.obj"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing shape of the ICT-FaceKit model")
            verts = read_obj_vertices(path)
            if verts.shape != neutral.shape:
                raise ValueError(
                    f"{path}: {verts.shape[0]} vertices, the neutral mesh has {neutral.shape[0]}"
                )
            out[k] = verts - neutral
        return out

    return _model(
        neutral=neutral,
        identity_basis=deltas(identity_names),
        identity_names=identity_names,
        expression_basis=deltas(expression_names),
        expression_names=expression_names,
        quads=read_obj_polygons(folder / NEUTRAL_OBJ),
        landmarks=np.asarray(indices["idx_to_landmark_verts"]),
    )

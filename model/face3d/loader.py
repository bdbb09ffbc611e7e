"""Finding and loading the 3D morphable model: the configured path, or the default ICT Face Model Light.

``load_morphable_model`` reads a ``head2head-3dmm/1`` npz (``model.face3d.morphable_model``), the packed
ICT npz or an ICT-FaceKit OBJ folder (``model.face3d.ict_facekit``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.face3d import ict_facekit
from model.face3d.morphable_model import FORMAT, MorphableModel, from_format_npz

# Where the default model is looked for when no path is configured, in order.
DEFAULT_MODEL_ENV = "HEAD2HEAD_3DMM"
DEFAULT_MODEL_CANDIDATES = (
    "../shared/3dmm/ict_facekit_light.npz",
    "shared/3dmm/ict_facekit_light.npz",
    "~/.cache/head2head/ict_facekit_light.npz",
)


@dataclass(frozen=True)
class MorphableModelConfig:
    """Which 3DMM to use: a head2head-3dmm npz, the packed ICT npz, or an ICT-FaceKit folder.

    ``path=None`` searches $HEAD2HEAD_3DMM, then ../shared/3dmm/ict_facekit_light.npz and the user cache.
    """

    path: str | None = None


class ModelNotFoundError(FileNotFoundError):
    """No 3DMM file was given and none was found; the message says where it looked and what to do."""


def find_default_model() -> Path:
    """The default model file: $HEAD2HEAD_3DMM, else the first existing candidate path."""
    looked = []
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        looked.append(f"${DEFAULT_MODEL_ENV}={env}")
        if Path(env).expanduser().exists():
            return Path(env).expanduser()
    here = Path(__file__).resolve().parents[2]  # the checkout
    for candidate in DEFAULT_MODEL_CANDIDATES:
        for base in (Path.cwd(), here):
            path = (
                (base / candidate).expanduser().resolve()
                if not candidate.startswith("~")
                else Path(candidate).expanduser()
            )
            looked.append(str(path))
            if path.exists():
                return path
    raise ModelNotFoundError(
        "no 3D morphable model found. Looked in: "
        + ", ".join(dict.fromkeys(looked))
        + ". Get the ICT Face Model Light (MIT) with `git clone https://github.com/ICT-VGL/ICT-FaceKit` "
        "and pass its FaceXModel folder (or a packed ict_facekit_light.npz, or a model converted to the "
        f"{FORMAT} format) as the model path, or set ${DEFAULT_MODEL_ENV}."
    )


def load_morphable_model(path: str | os.PathLike | None = None) -> MorphableModel:
    """Loads a 3DMM from a ``head2head-3dmm/1`` npz, the packed ICT npz, or an ICT-FaceKit folder.

    With ``path=None`` the default model is searched for (see ``find_default_model``).
    """
    resolved = Path(path).expanduser() if path is not None else find_default_model()
    if not resolved.exists():
        raise ModelNotFoundError(
            f"3DMM path {resolved} does not exist. Pass a {FORMAT} .npz, the packed ict_facekit_light.npz, "
            "or the FaceXModel folder of a clone of https://github.com/ICT-VGL/ICT-FaceKit."
        )
    if resolved.is_dir():
        return ict_facekit.import_obj_folder(resolved)
    with np.load(resolved, allow_pickle=False) as data:
        if "format" in data:
            return from_format_npz(data)
        if "quads" in data and "identity_deltas" in data:
            return ict_facekit.from_packed(data)
    raise ValueError(
        f"{resolved}: not a 3DMM file this project reads (expected a {FORMAT} npz, "
        "the packed ICT-FaceKit npz or an ICT-FaceKit folder)"
    )

"""Model files that ship inside installed Python packages, found without importing those packages.

face_recognition_models (dlib's predictors) imports pkg_resources, and mediapipe (the face-mesh and
selfie-segmentation .tflite files) needs a protobuf this project does not pin, so both are located with
``importlib.util.find_spec`` and only their files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_model_file(
    configured: str | None, package: str, relative: str, setting: str, missing: str
) -> Path:
    """A model file: ``configured`` when set, else ``relative`` inside the installed ``package``.

    Raises FileNotFoundError naming the ``setting`` to set; ``missing`` says what to do when the package
    is not installed (how to install it, or which backend needs no file).
    """
    if configured is not None:
        path = Path(configured)
    else:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{Path(relative).name}: {missing}")
        path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{Path(relative).name} not found at {path}: set {setting} to the file")
    return path

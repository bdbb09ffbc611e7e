"""The demo's inputs on any machine: ../shared when it is there, else pinned downloads into the cache.

``demo_inputs(shared_dir, allow_download)`` returns (3DMM path, clip paths). It looks, in order, at what
the user gave (a model path, input videos, ``$HEAD2HEAD_3DMM``), at ``shared_dir`` (the ``../shared``
laid beside the checkout in CI), at the cache, and only then downloads (``infra.assets`` pins what).
Without a network, or with downloads off, it raises one MissingInputsError that lists every missing
input with the URL to get it from and the path to put it at.

The face model is made by the project's own conversion (``model.face3d.loader.load_morphable_model`` of
the FaceXModel folder, written by ``save_morphable_model`` in the ``head2head-3dmm/1`` format, as
``python -m jobs.convert_3dmm`` does) and must reproduce ``ICT_MODEL_FINGERPRINT``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from infra import assets
from infra.fetch import (
    CACHE_ENV,
    PLAIN_PROGRESS_EVERY_S,
    ChecksumError,
    DownloadError,
    FetchError,
    cache_lock,
    cache_root,
    fetch,
    megabytes,
    sha256_file,
    short_reason,
)

MODEL_ENV = "HEAD2HEAD_3DMM"  # the variable model.face3d.loader reads
SHARED_MODEL = "3dmm/ict_facekit_light.npz"  # under shared_dir
SHARED_VIDEOS = "data/videos"  # under shared_dir, <name>.mp4
ICT_LABEL = f"the ICT Face Model Light ({assets.ICT_REPO} @ {assets.ICT_COMMIT[:7]}, {assets.ICT_LICENCE})"


class MissingInputsError(FetchError):
    """Inputs of the demo are neither on this machine nor downloadable; the message lists what to get."""


def model_fingerprint(model) -> str:
    """sha256 over a MorphableModel's fields in order: each array's name, dtype, shape and bytes, each
    other field's repr. Two models with equal fingerprints are bitwise the same model."""
    digest = hashlib.sha256()
    for field in dataclasses.fields(model):
        value = getattr(model, field.name)
        if hasattr(value, "dtype"):
            digest.update(f"{field.name}:{value.dtype.str}:{value.shape}:".encode())
            digest.update(value.tobytes(order="C"))
        else:
            digest.update(f"{field.name}={value!r};".encode())
    return digest.hexdigest()


def convert_ict_facekit(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    fingerprint: str | None = assets.ICT_MODEL_FINGERPRINT,
) -> Path:
    """Converts a 3DMM that ``load_morphable_model`` reads (here the FaceXModel folder) to a
    ``head2head-3dmm/1`` npz at ``dest``, written under a temporary name and renamed into place only
    when the written file reloads to ``fingerprint`` (None: no check)."""
    # torch comes with the model code: imported here so that the rest of this module stays light.
    import numpy as np

    from model.face3d.loader import load_morphable_model
    from model.face3d.morphable_model import from_format_npz, save_morphable_model

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.stem}.{os.getpid()}.npz")  # savez keeps a name ending in .npz
    try:
        save_morphable_model(load_morphable_model(source), partial)
        with np.load(partial, allow_pickle=False) as data:
            actual = model_fingerprint(from_format_npz(data))
        if fingerprint is not None and actual != fingerprint:
            raise ChecksumError(
                f"the 3DMM converted from {source} is not the pinned model\n"
                f"  expected fingerprint {fingerprint}\n  actual   fingerprint {actual}\n"
                "Its files passed their checksums, so the conversion code changed what it produces: "
                "compare model.face3d.ict_facekit with ../shared/3dmm/ict_facekit_light.npz."
            )
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def unpack_pinned(archive: Path, folder: Path, files: Sequence[assets.RepoFile]) -> None:
    """Extracts ``files`` from a GitHub archive (one top folder, ``<repo>-<commit>/``) into ``folder``,
    each checked against its sha256 and size; files already there with the right sha256 are kept.
    Raises ChecksumError naming the first member that is missing or differs."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {name.split("/", 1)[1]: name for name in zf.namelist() if "/" in name}
            for file in files:
                target = folder / file.path
                if target.exists() and sha256_file(target) == file.sha256:
                    continue
                if file.path not in members:
                    raise ChecksumError(f"{archive} has no {file.path} ({file.source})")
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f"{target.name}.{os.getpid()}.part")
                digest, size = hashlib.sha256(), 0
                with zf.open(members[file.path]) as src, open(partial, "wb") as out:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if digest.hexdigest() != file.sha256:
                    partial.unlink()
                    raise ChecksumError(
                        f"{archive}: {file.path} is not the pinned file ({file.source})\n"
                        f"  expected sha256 {file.sha256} ({file.size_bytes} bytes)\n"
                        f"  actual   sha256 {digest.hexdigest()} ({size} bytes)"
                    )
                os.replace(partial, target)
    except (zipfile.BadZipFile, EOFError) as error:
        raise ChecksumError(f"{archive} is not a readable zip archive ({error})") from None


def fetch_ict_facekit(
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    log: Callable[[str], object] = print,
    progress: bool = True,
    files: Sequence[assets.RepoFile] = assets.ICT_FILES,
    fingerprint: str | None = assets.ICT_MODEL_FINGERPRINT,
    keep_sources: bool = False,
    timeout_s: float = 30.0,
) -> Path:
    """The converted ICT Face Model Light at ``<cache>/ict_facekit_light.npz``, made on first use.

    Downloads the repository's zip at ICT_COMMIT and unpacks the pinned ``files``; where the archive
    cannot be had or holds other bytes, fetches each file from its raw URL instead. Then converts the
    FaceXModel folder (``convert_ict_facekit``), copies the LICENSE beside the model as
    ``ICT-FaceKit-LICENSE`` and deletes the archive, and the OBJ files unless ``keep_sources``. Needs
    about 0.6 GB of free disk while it runs (archive, OBJ files and model), 50 MB after. Raises
    FetchError with instructions when neither route works.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    dest = root / assets.ICT_MODEL_FILENAME
    if dest.exists():
        return dest
    folder = root / assets.ICT_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    with cache_lock(root, assets.ICT_MODEL_FILENAME):
        if dest.exists():  # another process made it while this one waited
            return dest
        archive = assets.ict_archive_asset(base_url)
        size = megabytes(assets.ICT_ARCHIVE_APPROX_BYTES)
        log(f"the 3D face model is not in the cache: fetching {ICT_LABEL}, about {size}")
        try:
            zip_path = fetch(archive, root, log, progress, timeout_s=timeout_s)
            try:
                unpack_pinned(zip_path, folder, files)
            finally:
                zip_path.unlink(missing_ok=True)  # kept only where it is good, unpacked
        except FetchError as error:
            log(f"the archive failed ({short_reason(error)}); fetching the {len(files)} files one by one")
            try:
                _fetch_files(files, root, base_url, log, progress, timeout_s)
            except FetchError as file_error:
                reasons = [f"archive: {short_reason(error)}", f"files: {short_reason(file_error)}"]
                lines = [f"could not fetch {ICT_LABEL}:", *(f"  {r}" for r in reasons)]
                raise DownloadError("\n".join([*lines, ict_instructions(dest, base_url)]), reasons) from None
        log(f"converting {folder / 'FaceXModel'} to {dest}")
        convert_ict_facekit(folder / "FaceXModel", dest, fingerprint)
        shutil.copyfile(folder / "LICENSE", root / "ICT-FaceKit-LICENSE")
        if not keep_sources:
            shutil.rmtree(folder, ignore_errors=True)
    return dest


def _fetch_files(
    files: Sequence[assets.RepoFile],
    root: Path,
    base_url: str | None,
    log: Callable[[str], object],
    progress: bool,
    timeout_s: float,
) -> None:
    """Fetches each pinned file from its raw URL, with one progress line per PLAIN_PROGRESS_EVERY_S
    for all of them rather than a bar (or two log lines) per file."""
    total_bytes = sum(file.size_bytes for file in files)
    done_bytes, last_line_s = 0, time.monotonic()
    for k, file in enumerate(files, 1):
        fetch(assets.ict_file_asset(file, base_url), root, lambda _: None, False, timeout_s=timeout_s)
        done_bytes += file.size_bytes
        if progress and (k == len(files) or time.monotonic() - last_line_s >= PLAIN_PROGRESS_EVERY_S):
            last_line_s = time.monotonic()
            size = f"{megabytes(done_bytes)} of {megabytes(total_bytes)}"
            log(f"ICT-FaceKit: {k} of {len(files)} files, {size}")


def ict_instructions(dest: Path, base_url: str | None = None) -> str:
    """How to provide the ICT model by hand."""
    url = assets.archive_url(assets.ICT_REPO, assets.ICT_COMMIT, base_url)
    top = f"ICT-FaceKit-{assets.ICT_COMMIT}"
    size = megabytes(assets.ICT_ARCHIVE_APPROX_BYTES)
    return (
        f"To provide the 3D face model by hand: download {url} (about {size}), unzip it and either "
        f"set ${MODEL_ENV}={top}/FaceXModel (read directly, slower to load), or run "
        f"`python -m jobs.convert_3dmm --output OUT --set model.path={top}/FaceXModel` and put "
        f"OUT/model.npz at {dest}; a copy of ../shared/3dmm/ict_facekit_light.npz works too (put "
        f"it at {dest}, or point ${MODEL_ENV} at it)."
    )


def _clip_instructions(name: str, dest: Path, base_url: str | None) -> str:
    file = assets.CLIPS[name]
    return (
        f"clip {name} ({file.source}, {file.licence}): download {assets.file_url(file, base_url)} "
        f"({megabytes(file.size_bytes)}, sha256 {file.sha256}) and put it at {dest}"
    )


def demo_inputs(
    shared_dir: str | os.PathLike | None,
    allow_download: bool = True,
    *,
    clips: Sequence[str] = assets.DEMO_CLIPS,
    inputs: Sequence[str | os.PathLike] | None = None,
    model_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    log: Callable[[str], object] = print,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> tuple[Path, list[Path]]:
    """(3DMM path, clip paths) for the demo.

    Model: ``model_path``, else $HEAD2HEAD_3DMM, else ``<shared_dir>/3dmm/ict_facekit_light.npz``, else
    the cache (``fetch_ict_facekit``). Clips: ``inputs`` as given, else for each name of ``clips``
    ``<shared_dir>/data/videos/<name>.mp4``, else the pinned download in ``<cache>/videos``. Nothing is
    downloaded unless ``allow_download``; a given path that does not exist is an error. Raises
    MissingInputsError listing everything missing and how to get it.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    shared = Path(shared_dir).expanduser() if shared_dir is not None else None
    missing: list[str] = []
    failures: list[str] = []

    unknown = [name for name in clips if name not in assets.CLIPS]
    if unknown and not inputs:
        raise ValueError(f"no pinned clip {', '.join(unknown)}; pinned: {', '.join(assets.CLIPS)}")
    given = [Path(p).expanduser() for p in ([model_path] if model_path else []) + list(inputs or [])]
    absent = [str(p) for p in given if not p.exists()]
    if not model_path and os.environ.get(MODEL_ENV) and not Path(os.environ[MODEL_ENV]).expanduser().exists():
        absent.append(f"${MODEL_ENV}={os.environ[MODEL_ENV]}")
    if absent:
        raise MissingInputsError(f"these demo inputs do not exist: {', '.join(absent)}")

    model = _find_model(model_path, shared, root)
    if model is None and allow_download:
        try:
            model = fetch_ict_facekit(
                root, base_url=base_url, log=log, progress=progress, timeout_s=timeout_s
            )
        except FetchError as error:
            failures.append(f"3D face model: {short_reason(error)}")
    if model is None:
        missing.append(ict_instructions(root / assets.ICT_MODEL_FILENAME, base_url))

    videos = [Path(p).expanduser() for p in inputs or []]
    for name in [] if inputs else clips:
        asset = assets.clip_asset(name, base_url)
        shared_clip = shared / SHARED_VIDEOS / f"{name}.mp4" if shared else None
        cached = root / asset.filename
        if shared_clip is not None and shared_clip.exists():
            videos.append(shared_clip)
        elif cached.exists() and sha256_file(cached) == asset.sha256:
            videos.append(cached)
        elif allow_download:
            try:
                videos.append(fetch(asset, root, log, progress, timeout_s=timeout_s))
            except FetchError as error:
                failures.append(f"clip {name}: {short_reason(error)}")
                missing.append(_clip_instructions(name, cached, base_url))
        else:
            missing.append(_clip_instructions(name, cached, base_url))

    if missing:
        looked = f"{shared} and " if shared else ""
        why = "downloads failed" if allow_download else "downloading is switched off"
        raise MissingInputsError(
            f"the demo needs inputs that are not on this machine (looked in {looked}the cache {root}; "
            f"{why}):\n"
            + "\n".join(f"- {line}" for line in missing)
            + f"\nOr give your own videos as the demo's input. ${CACHE_ENV} moves the cache folder."
            + ("\n\nWhat went wrong:\n" + "\n".join(failures) if failures else "")
        )
    return model, videos


def _find_model(model_path, shared: Path | None, root: Path) -> Path | None:
    """The first existing model of: the given path, $HEAD2HEAD_3DMM, the shared copy, the cached one."""
    candidates = [model_path, os.environ.get(MODEL_ENV)]
    candidates += [shared / SHARED_MODEL if shared else None, root / assets.ICT_MODEL_FILENAME]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().exists():
            return Path(candidate).expanduser()
    return None

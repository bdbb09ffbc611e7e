"""The list of videos a preprocessing run works on.

``--input`` is a folder or S3 prefix of videos (identity = file stem), or a manifest file (CSV or
Parquet) with a ``path`` column and an optional ``identity`` column; relative paths in a manifest are
relative to the manifest's folder. Each video gets a stable ``video_id``: its stem plus a short hash of
its full URI, so equal file names in different folders do not collide and reruns recognise their work.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from dataclasses import dataclass

from infra import storage
from pipeline import schema

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MANIFEST_EXTENSIONS = (".csv", ".parquet")


@dataclass(frozen=True)
class VideoSource:
    """One input video: its URI, identity label, stable id, and the manifest's licence or consent note."""

    uri: str
    identity: str
    video_id: str
    note: str = ""


def video_id_for(uri: str) -> str:
    """``<stem>-<8 hex of sha1(uri)>``, restricted to characters safe in file names and S3 keys."""
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "video"
    return f"{safe}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}"


def _stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def _read_manifest(uri: str) -> list[VideoSource]:
    import pandas as pd  # here, not at the top: the workers import this module but read no manifest

    data = storage.read_bytes(uri)
    table = (
        pd.read_csv(io.BytesIO(data)) if uri.lower().endswith(".csv") else pd.read_parquet(io.BytesIO(data))
    )
    if schema.MANIFEST_PATH not in table.columns:
        raise ValueError(
            f"--input {storage.redact(uri)}: a manifest needs a '{schema.MANIFEST_PATH}' column (and may "
            f"have '{schema.MANIFEST_IDENTITY}' and '{schema.MANIFEST_NOTE}')"
        )
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    def column(name: str) -> list:
        return list(table[name]) if name in table.columns else [None] * len(table)

    def text(value) -> str:
        return "" if value is None or pd.isna(value) else str(value)

    sources = []
    for path, identity, note in zip(
        table[schema.MANIFEST_PATH], column(schema.MANIFEST_IDENTITY), column(schema.MANIFEST_NOTE)
    ):
        path = str(path)
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) and not path.startswith("/"):
            path = storage.join(base, path)
        identity = text(identity) or _stem(path)
        sources.append(VideoSource(uri=path, identity=identity, video_id=video_id_for(path), note=text(note)))
    return sources


def discover_videos(input_uri: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoSource]:
    """The videos of ``input_uri`` (folder, prefix, single video or manifest), sorted by URI.

    Raises ValueError naming the input when nothing is found or ids collide.
    """
    if input_uri.lower().endswith(MANIFEST_EXTENSIONS):
        if not storage.exists(input_uri):
            raise ValueError(f"--input {storage.redact(input_uri)}: manifest not found")
        sources = _read_manifest(input_uri)
    else:
        uris = storage.list_files(input_uri, extensions)
        sources = [VideoSource(uri=u, identity=_stem(u), video_id=video_id_for(u)) for u in uris]
    if not sources:
        raise ValueError(
            f"--input {storage.redact(input_uri)}: no videos found (looked for {' '.join(extensions)}; "
            "or pass a .csv/.parquet manifest with a 'path' column)"
        )
    ids = [s.video_id for s in sources]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"--input {storage.redact(input_uri)}: videos listed twice: {duplicates[:5]}")
    return sorted(sources, key=lambda s: s.uri)

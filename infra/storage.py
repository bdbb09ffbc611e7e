"""Storage URIs everywhere: ``/local/path``, ``file:///path`` and ``s3://bucket/prefix`` through fsspec.

S3 credentials come from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, profiles); an S3-compatible
store (MinIO, Ceph, a moto server) is reached by setting ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
Nothing here ever writes a credential into a log, a config or a URI: use ``redact`` on any URI that a
user may have written with inline credentials before printing it.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import fsspec

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_INLINE_CREDENTIALS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def scheme(uri: str) -> str:
    """'s3', 'file', ... ('file' for a plain local path)."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def is_local(uri: str) -> bool:
    return scheme(uri) in ("file", "local")


def s3_options() -> dict:
    """fsspec/s3fs options from the environment: only the endpoint override is passed explicitly."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict = {}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it (no scheme)."""
    kind = scheme(uri)
    if kind in ("file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if kind in ("s3", "s3a"):
        fs = fsspec.filesystem("s3", **s3_options())
        return fs, uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def normalise(uri: str) -> str:
    """A canonical form: absolute local paths without scheme, other URIs unchanged (minus trailing /)."""
    if is_local(uri):
        return filesystem(uri)[1]
    return uri.rstrip("/")


def join(uri: str, *parts: str) -> str:
    """Joins path parts onto a URI with '/' (for S3) or the local separator."""
    if is_local(uri):
        return os.path.join(normalise(uri), *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Turns a filesystem path back into a URI of that filesystem."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def remove(uri: str, recursive: bool = False) -> bool:
    """Deletes a file (or, with ``recursive``, a folder or prefix and all below it); False when absent."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return False
    fs.rm(path, recursive=recursive)
    return True


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


@contextlib.contextmanager
def atomic_writer(uri: str) -> Iterator[BinaryIO]:
    """A binary file to write ``uri`` through, so that readers never see a partial file.

    Local files are written beside the target and renamed into place when the block ends (removed if it
    raises); S3 objects are buffered in memory and sent in one PUT, atomic by itself, when it ends. The
    local temporary file is hidden (".<name>.tmp-<id>"), so the partial file a killed process leaves is
    skipped by dataset readers (pyarrow, pandas and Ray Data skip names starting with ".") and globs.
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        buffer = io.BytesIO()
        yield buffer
        with fs.open(path, "wb") as f:
            f.write(buffer.getbuffer())


def write_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` so that readers never see a partial file (``atomic_writer``)."""
    with atomic_writer(uri) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str, extensions: Iterable[str] | None = None, recursive: bool = True) -> list[str]:
    """Files under a folder/prefix as URIs of the same scheme, sorted; optionally filtered by suffix."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    if fs.isfile(path):
        found = [path]
    elif recursive:
        found = [p for p in fs.find(path) if not p.endswith("/")]
    else:
        found = [p for p in fs.ls(path, detail=False) if fs.isfile(p)]
    if extensions is not None:
        suffixes = tuple(e.lower() for e in extensions)
        found = [p for p in found if p.lower().endswith(suffixes)]
    return sorted(unstrip(fs, p) for p in found)


def redact(uri: str) -> str:
    """Removes inline credentials (``s3://KEY:SECRET@bucket``) from a URI before it is printed or logged."""
    return _INLINE_CREDENTIALS.sub(r"\1***@", uri)

"""Pinned downloads into the user cache: one file per ``Asset`` (URLs, sha256, size), fetched once.

``fetch(asset)`` downloads into ``cache_root() / asset.filename`` and returns that path; a second call
finds the verified file and touches no network. The steps, and why each is there:

- the bytes go to ``<file>.part`` and are renamed into place only after the sha256 matched, so a reader
  never sees a half-written or wrong file under the final name;
- an interrupted transfer keeps its ``.part``; the next attempt (in the same call, or a later run)
  asks for the rest with an HTTP ``Range: bytes=N-`` request, and starts over when the server answers
  with the whole file (200) instead of the rest (206);
- every socket operation has a timeout (``timeout_s``) and only a transfer that broke after it started
  is retried, so an offline machine fails at once and a stalled server within ``timeout_s``; the error
  then says what to download from where and where to put it;
- a sha256 mismatch deletes the download and names the asset, URL and both checksums;
- a lock file (in ``<cache>/.locks``) serialises two processes fetching the same asset.

Progress goes to a tqdm bar when stderr is a terminal (tqdm is installed with the pinned requirements;
without it, or without a terminal, a plain line through ``log`` every ``PLAIN_PROGRESS_EVERY_S``).
Standard library only otherwise: no Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "HEAD2HEAD_CACHE"
USER_AGENT = "head2head-fetch/1"
CHUNK_BYTES = 1 << 20
PLAIN_PROGRESS_EVERY_S = 10.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def cache_root() -> Path:
    """The project's cache folder: $HEAD2HEAD_CACHE, else $XDG_CACHE_HOME/head2head, else
    ~/.cache/head2head (``model.face3d.loader`` looks for the default 3DMM in the last one)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "head2head"


@dataclass(frozen=True)
class Asset:
    """One pinned file.

    name: what messages call it, e.g. ``liveportrait_d0.mp4``.
    filename: its path under the cache folder, e.g. ``videos/liveportrait_d0.mp4``.
    urls: tried in order; the next one only when a URL cannot be reached or answers with an HTTP error.
    sha256: lowercase hex of the whole file; None only where the caller checks the content itself
        (an archive whose members are pinned, see ``infra.assets``).
    size_bytes: the file's size, or None where unknown; a known size detects a short transfer.
    source: where the file comes from, for people (``owner/repo @ commit : path``).
    licence: the licence of the source repository.
    offline_hint: other ways to get the same thing, appended to the offline error.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size_bytes: int | None = None
    source: str = ""
    licence: str = ""
    offline_hint: str = ""

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"asset {self.name}: no URL")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"asset {self.name}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        path = Path(self.filename)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"asset {self.name}: filename {self.filename!r} must be relative, without '..'")


class FetchError(RuntimeError):
    """A pinned file could not be provided; the message says what to do instead."""


class ChecksumError(FetchError):
    """The downloaded bytes are not the pinned ones (the download has been deleted)."""


class DownloadError(FetchError):
    """No URL of the asset delivered the file (offline, unreachable, HTTP error, transfer kept failing).

    ``reasons``: one line per URL tried, ``"<url>: <what happened>"``.
    """

    def __init__(self, message: str, reasons: list[str] | None = None):
        super().__init__(message)
        self.reasons = list(reasons or [])


class _UrlFailed(Exception):
    """One URL gave up; the reason is collected for the DownloadError."""


def sha256_file(path: str | os.PathLike) -> str:
    """Lowercase hex sha256 of a file, read in CHUNK_BYTES pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def short_reason(error: FetchError) -> str:
    """One line for a FetchError: its URL reasons, else the first line of its message."""
    return "; ".join(getattr(error, "reasons", None) or [str(error).splitlines()[0]])


def megabytes(n_bytes: int | None) -> str:
    return "unknown size" if n_bytes is None else f"{n_bytes / 1e6:.1f} MB"


def fetch(
    asset: Asset,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], object] = print,
    progress: bool = True,
    *,
    timeout_s: float = 30.0,
    retries: int = 3,
    backoff_s: float = 1.0,
) -> Path:
    """Returns the verified local copy of ``asset`` under ``cache_dir`` (default ``cache_root()``),
    downloading it first where it is not there yet.

    timeout_s: limit on each connect and each read; retries: further attempts (each resuming the
    ``.part`` file) after a transfer broke off, waiting backoff_s, 2 backoff_s, 4 backoff_s ... Raises
    ChecksumError or DownloadError (both FetchError) with instructions.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    dest = root / asset.filename
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(root, asset.filename):
        if dest.exists():
            if asset.sha256 is None or sha256_file(dest) == asset.sha256:
                return dest
            log(f"{dest}: the cached copy does not match its pinned sha256; fetching it again")
            dest.unlink()
        reasons = []
        for url in asset.urls:
            log(f"fetching {asset.name} ({megabytes(asset.size_bytes)}) from {url}")
            try:
                _download(url, part, asset, log, progress, timeout_s, retries, backoff_s)
            except _UrlFailed as error:
                reasons.append(f"{url}: {error}")
                continue
            _verify(part, asset, url, dest)
            os.replace(part, dest)
            log(f"{asset.name}: saved {dest}")
            return dest
    raise DownloadError(offline_message(asset, dest, reasons), reasons)


def offline_message(asset: Asset, dest: Path, reasons: list[str]) -> str:
    """What failed and how to put the file in place by hand (the DownloadError's text)."""
    pin = f"sha256 {asset.sha256}" if asset.sha256 else "its members are checked after unpacking"
    lines = [f"could not download {asset.name}" + (f" ({asset.source})" if asset.source else "") + ":"]
    lines += [f"  {reason}" for reason in reasons]
    lines.append(
        f"Offline or blocked? Download {asset.urls[0]} ({megabytes(asset.size_bytes)}, {pin}) where "
        f"the internet is reachable and put it at {dest}; the next run uses it without a network "
        f"(set ${CACHE_ENV} to use another cache folder)."
    )
    if asset.offline_hint:
        lines.append(asset.offline_hint)
    return "\n".join(lines)


def _verify(part: Path, asset: Asset, url: str, dest: Path) -> None:
    """Checks the sha256 of a finished download; deletes it and raises ChecksumError on a mismatch."""
    if asset.sha256 is None:
        return
    actual = sha256_file(part)
    if actual == asset.sha256:
        return
    size = part.stat().st_size
    part.unlink()
    raise ChecksumError(
        f"{asset.name}: the file downloaded from {url} is not the pinned one\n"
        f"  expected sha256 {asset.sha256} ({megabytes(asset.size_bytes)})\n"
        f"  actual   sha256 {actual} ({megabytes(size)})\n"
        f"The download was deleted. Run again to retry; if the checksum differs again, the source has "
        f"changed or a proxy alters it: get the file {asset.source or url} some other way, check its "
        f"sha256, and put it at {dest}."
    )


@contextlib.contextmanager
def cache_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive advisory lock (flock) on ``name`` in the cache folder ``root``: one process at a time
    makes that entry. The lock files stay (removing one would let two processes hold "the" lock) and are
    kept apart in ``root/.locks``."""
    lock_path = root / ".locks" / f"{name.replace('/', '_')}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(
    url: str,
    part: Path,
    asset: Asset,
    log: Callable[[str], object],
    progress: bool,
    timeout_s: float,
    retries: int,
    backoff_s: float,
) -> None:
    """Brings ``part`` to the whole file from ``url``, resuming what is there. Raises _UrlFailed."""
    expected = asset.size_bytes
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        if expected is not None and offset > expected:
            part.unlink()  # longer than the pinned file: nothing in it can be trusted
            offset = 0
        if expected is not None and offset == expected:
            return  # a complete .part from an earlier run; the checksum decides
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            log(f"{asset.name}: resuming at {megabytes(offset)}")
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 416 and offset:  # the range starts at or past the end: start over
                part.unlink()
                last_error = "HTTP 416 for the rest of a partial download"
                continue
            if error.code in (408, 429) or error.code >= 500:
                last_error = f"HTTP {error.code} {error.reason}"
                continue
            raise _UrlFailed(f"HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            # No answer at all (offline, refused, name not resolved, stalled): retrying will not help.
            raise _UrlFailed(f"unreachable ({getattr(error, 'reason', None) or error})") from None
        try:
            with response:
                total = _copy_body(response, part, offset, expected, asset.name, log, progress)
        except (OSError, http.client.HTTPException) as error:  # broke off mid-transfer: resume
            last_error = f"transfer broke off ({error})"
            continue
        size = part.stat().st_size
        if total is None or size == total:
            return
        last_error = f"connection closed after {size} of {total} bytes"
    raise _UrlFailed(f"gave up after {retries + 1} attempts: {last_error}")


def _copy_body(
    response,
    part: Path,
    offset: int,
    expected: int | None,
    name: str,
    log: Callable[[str], object],
    progress: bool,
) -> int | None:
    """Writes the response body into ``part`` at the offset the server answered for (0 for a 200, the
    Content-Range start for a 206). Returns the file's total size as far as it is known."""
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.match(content_range)
        if not match or int(match.group(1)) != offset:
            raise http.client.HTTPException(f"unexpected Content-Range {content_range!r} for offset {offset}")
        total = int(match.group(3)) if match.group(3) != "*" else expected
    else:
        offset = 0  # the whole file again: the server ignored the range
        total = length if length is not None else expected
    if expected is not None and total is not None and total != expected:
        raise _UrlFailed(f"the server offers {total} bytes, the pinned file has {expected}")
    bar = _Progress(name, total, offset, log, progress)
    try:
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    return total


class _Progress:
    """A tqdm bar on a terminal, else a plain line through ``log`` every PLAIN_PROGRESS_EVERY_S."""

    def __init__(self, name: str, total: int | None, done: int, log: Callable[[str], object], show: bool):
        self.name, self.total, self.done, self.log = name, total, done, log
        self.show = show
        self.bar = None
        self.last_line_s = time.monotonic()
        if show and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=name
                )

    def update(self, n_bytes: int) -> None:
        self.done += n_bytes
        if self.bar is not None:
            self.bar.update(n_bytes)
        elif self.show and time.monotonic() - self.last_line_s >= PLAIN_PROGRESS_EVERY_S:
            self.last_line_s = time.monotonic()
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            total = f" of {megabytes(self.total)}" if self.total else ""
            self.log(f"{self.name}: {megabytes(self.done)}{total}{share}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

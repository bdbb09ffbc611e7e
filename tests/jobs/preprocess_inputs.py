"""Inputs for the preprocessing job's end-to-end tests: short real clips and bad inputs mixed in."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

GOOD_CLIPS = ("dpe_d", "liveportrait_d0", "sadtalker_WDA_KatieHill_000")
TWO_PEOPLE_PHOTOS = ("deep3dfacerecon_000006.jpg", "deep3dfacerecon_000031.jpg")


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> None:
    """frames (T, H, W, 3) uint8 RGB -> an mp4 (MPEG-4 part 2) file."""
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1])
    )
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def trimmed_clip(source: Path, target: Path, frames: int) -> None:
    import decord

    reader = decord.VideoReader(str(source))
    write_video(target, reader.get_batch(list(range(frames))).asnumpy(), reader.get_avg_fps())


def two_people_photo(images: Path) -> np.ndarray:
    """Two different people side by side, one photo (H, W, 3) uint8 RGB."""
    a, b = (cv2.cvtColor(cv2.imread(str(images / name)), cv2.COLOR_BGR2RGB) for name in TWO_PEOPLE_PHOTOS)
    height = min(a.shape[0], b.shape[0])
    a, b = (cv2.resize(x, (int(x.shape[1] * height / x.shape[0]), height)) for x in (a, b))
    return np.concatenate([a, b], axis=1)


def make_inputs(
    folder: Path, videos: Path, images: Path, frames: int = 40, bad: bool = True
) -> dict[str, str]:
    """Writes the good clips (first ``frames`` frames) and, with ``bad``, the bad inputs.

    Returns {stem: expected status or failure reason}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name in GOOD_CLIPS:
        trimmed_clip(videos / f"{name}.mp4", folder / f"{name}.mp4", frames)
        expected[name] = "ok"
    if bad:
        (folder / "zero_bytes.mp4").write_bytes(b"")
        (folder / "notes.mp4").write_text("this is a text file named like a video\n")
        photo = two_people_photo(images)
        write_video(
            folder / "two_people.mp4",
            np.repeat(photo[None], 12, axis=0)[:, : photo.shape[0] // 2 * 2, : photo.shape[1] // 2 * 2],
        )
        rng = np.random.default_rng(0)
        noise = rng.uniform(0, 255, (24, 240, 320, 3)).astype(np.float32)
        wall = np.stack([cv2.GaussianBlur(f, (0, 0), 6) for f in noise]).astype(np.uint8)
        write_video(folder / "no_face.mp4", wall)
        expected |= {
            "zero_bytes": "unreadable",
            "notes": "unreadable",
            "two_people": "multiple_faces",
            "no_face": "no_face",
        }
    return expected

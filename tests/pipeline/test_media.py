from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from infra import storage
from pipeline import media, schema

FPS = 25


def _frames(t: int, h: int, w: int) -> np.ndarray:
    """(T, H, W, 3) uint8: smooth gradients that move over time (H.264 keeps them within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [
            np.stack([(xx * 3 + 4 * i) % 256, (yy * 4) % 256, np.full_like(xx, 60 + 5 * i)], -1)
            for i in range(t)
        ]
    ).astype(np.uint8)


def _sine(path: str, codec: str, seconds: float = 3.0, rate: int = 22050) -> str:
    """A 440 Hz tone written with PyAV: ``pcm_s16le`` in .wav (re-encoded by the writer) or ``aac``
    in .m4a (copied)."""
    container = av.open(path, "w")
    stream = container.add_stream(codec, rate=rate)
    stream.layout = "mono"
    samples = np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate).astype(np.float32) * 0.3
    chunk = 1024
    for start in range(0, len(samples), chunk):
        piece = samples[None, start : start + chunk]
        if codec == "pcm_s16le":
            frame = av.AudioFrame.from_ndarray((piece * 32767).astype(np.int16), format="s16", layout="mono")
        else:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return path


def _read_pyav(path) -> tuple[np.ndarray, av.container.InputContainer]:
    container = av.open(str(path))
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    container.seek(0)
    return frames, container


def test_an_mp4_reads_back_with_pyav_and_decord(tmp_path):
    import decord

    frames = _frames(20, 48, 64)
    path = tmp_path / "out" / "clip.mp4"
    assert media.write_mp4(str(path), frames, FPS) == str(path)
    decoded, container = _read_pyav(path)
    stream = container.streams.video[0]
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == FPS and (stream.width, stream.height) == (64, 48)
    codec = stream.codec_context  # tagged BT.601 limited range, the matrix the frames were converted with
    assert (codec.colorspace, codec.color_primaries, codec.color_range) == (6, 6, 1)
    assert not container.streams.audio
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 3.0
    reader = decord.VideoReader(str(path))
    assert len(reader) == 20 and reader.get_avg_fps() == pytest.approx(FPS)
    by_decord = reader.get_batch(list(range(20))).asnumpy()
    assert np.abs(by_decord.astype(int) - frames).mean() < 3.0
    # The hidden temporary file was renamed into place.
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]


def test_odd_sizes_are_padded_by_repeating_the_last_row_and_column(tmp_path):
    frames = _frames(6, 33, 47)
    frames[:, -1, :] = (250, 20, 20)  # a red last row and a green last column survive the padding
    frames[:, :, -1] = (20, 250, 20)
    path = tmp_path / "odd.mp4"
    media.write_mp4(str(path), iter(list(frames)), FPS)  # an iterator of frames, not an array
    decoded, _ = _read_pyav(path)
    assert decoded.shape == (6, 34, 48, 3)
    assert np.abs(decoded[:, :33, :47].astype(int) - frames).mean() < 3.0
    assert np.abs(decoded[:, 33, 4:40].astype(int) - (250, 20, 20)).mean() < 20
    assert np.abs(decoded[:, 4:28, 47].astype(int) - (20, 250, 20)).mean() < 20


def test_a_non_integer_frame_rate_is_kept_exactly(tmp_path):
    path = tmp_path / "ntsc.mp4"
    media.write_mp4(str(path), _frames(4, 16, 16), 30000 / 1001)
    stream = av.open(str(path)).streams.video[0]
    assert stream.average_rate == fractions.Fraction(30000, 1001)


@pytest.mark.parametrize("codec, suffix", [("pcm_s16le", ".wav"), ("aac", ".m4a")])
def test_audio_is_copied_or_reencoded_and_cut_at_the_video_end(tmp_path, codec, suffix):
    audio = _sine(str(tmp_path / f"tone{suffix}"), codec)
    path = tmp_path / "talk.mp4"
    metadata = {"title": "sample", "comment": "generated", "synthetic": "true", "tool": "head2head"}
    with media.VideoWriter(str(path), FPS, audio_from=audio, metadata=metadata) as video:
        for frame in _frames(30, 32, 32):  # 1.2 s of a 3 s tone
            video.write(frame)
        assert video.has_audio
    container = av.open(str(path))
    assert {k: container.metadata.get(k) for k in metadata} == metadata
    (stream,) = container.streams.audio
    assert stream.codec_context.name == "aac" and stream.rate == 22050
    # Re-encoded audio is cut at the video's end exactly; copied AAC at a packet (1024 samples) border.
    duration_s = float(stream.duration * stream.time_base)
    tolerance_s = 1e-3 if codec == "pcm_s16le" else 1024 / 22050
    assert abs(duration_s - 1.2) <= tolerance_s, duration_s
    samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(stream)])
    assert 1.2 * 22050 - 1024 <= len(samples) <= 1.2 * 22050 + 2 * 1024  # decoders add the AAC padding
    assert 0.15 < np.abs(samples[4096:8192]).max() < 0.45  # the tone, not silence
    assert container.streams.video[0].frames == 30


def test_a_source_without_audio_gives_a_silent_video(tmp_path):
    silent = media.write_mp4(str(tmp_path / "silent.mp4"), _frames(3, 16, 16), FPS)
    with media.VideoWriter(str(tmp_path / "again.mp4"), FPS, audio_from=silent) as video:
        video.write(_frames(1, 16, 16)[0])
    assert not video.has_audio
    assert not av.open(str(tmp_path / "again.mp4")).streams.audio


def test_the_shared_clip_audio_is_copied(tmp_path, shared_videos):
    source = shared_videos / "liveportrait_d18.mp4"
    path = media.write_mp4(str(tmp_path / "dub.mp4"), _frames(10, 32, 32), FPS, audio_from=str(source))
    (stream,) = av.open(path).streams.audio
    assert stream.codec_context.name == "aac" and stream.rate == 44100


def test_bad_frames_and_failures_leave_no_file(tmp_path):
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="uint8"):
        media.write_mp4(str(path), [np.zeros((8, 8, 3), np.float32)], FPS)
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        media.write_mp4(str(path), [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], FPS)
    with pytest.raises(ValueError, match="at least one frame"):
        media.write_mp4(str(path), [], FPS)
    assert list(tmp_path.iterdir()) == []


def test_videos_and_pngs_upload_to_s3_with_audio_from_s3(tmp_path, s3_env, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"  # where the local video and the audio's copy are made
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    frames = _frames(5, 16, 24)
    audio = storage.join(s3_env, "inputs", "tone.wav")
    storage.write_bytes(audio, open(_sine(str(tmp_path / "tone.wav"), "pcm_s16le"), "rb").read())
    uri = storage.join(s3_env, "previews", "clip.mp4")
    media.write_mp4(uri, frames, FPS, audio_from=audio, metadata={"comment": "on s3"})
    local = tmp_path / "back.mp4"
    local.write_bytes(storage.read_bytes(uri))
    decoded, container = _read_pyav(local)
    assert decoded.shape == frames.shape and container.metadata["comment"] == "on s3"
    assert container.streams.audio[0].codec_context.name == "aac"
    assert list(scratch.iterdir()) == []
    png = storage.join(s3_env, "previews", "sheet.png")
    media.write_png(png, frames[0])
    np.testing.assert_array_equal(schema.decode_image(storage.read_bytes(png)), frames[0])


def test_to_uint8_conventions():
    np.testing.assert_array_equal(media.to_uint8(np.array([0.0, 0.5, 1.0, 2.0])), [0, 128, 255, 255])
    np.testing.assert_array_equal(media.to_uint8(np.array([-1.0, 0.0, 1.0]), (-1, 1)), [0, 128, 255])
    np.testing.assert_array_equal(media.to_uint8(np.array([True, False])), [255, 0])
    with pytest.raises(ValueError, match="int64"):
        media.to_uint8(np.array([1, 2]))


def test_write_png_is_lossless_for_rgb_grey_and_float(tmp_path):
    rgb = _frames(1, 9, 7)[0]
    media.write_png(str(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(schema.decode_image((tmp_path / "rgb.png").read_bytes()), rgb)
    media.write_png(str(tmp_path / "mask.png"), rgb[..., 0] > 100)
    grey = schema.decode_image((tmp_path / "mask.png").read_bytes())
    np.testing.assert_array_equal(grey, np.where(rgb[..., 0] > 100, 255, 0))
    media.write_png(str(tmp_path / "float.png"), np.full((4, 4, 3), 0.5, np.float32))
    assert (schema.decode_image((tmp_path / "float.png").read_bytes()) == 128).all()


def test_image_grid_puts_each_tile_where_the_docstring_says():
    h, w, p = 6, 10, 3
    rows = [[np.full((h, w, 3), 10 * (r * 3 + c + 1), np.uint8) for c in range(3)] for r in range(2)]
    rows[1][1] = np.full((h, w), 0.5)  # grey float in [0, 1] -> 128 in all channels
    rows[1][2] = np.ones((h, w), bool)  # a mask -> 255
    sheet = media.image_grid(rows, pad_px=p, pad_value=0)
    assert sheet.shape == (p + 2 * (h + p), p + 3 * (w + p), 3) and sheet.dtype == np.uint8
    expected = {(0, 0): 10, (0, 1): 20, (0, 2): 30, (1, 0): 40, (1, 1): 128, (1, 2): 255}
    for (r, c), value in expected.items():
        y, x = p + r * (h + p), p + c * (w + p)
        assert (sheet[y : y + h, x : x + w] == value).all(), (r, c)
        assert (sheet[y - 1, x : x + w] == 0).all() and (sheet[y : y + h, x - 1] == 0).all()
    assert (sheet[-p:] == 0).all() and (sheet[:, -p:] == 0).all()


def test_image_grid_labels_ragged_rows_and_value_range():
    h, w, p = 24, 40, 2
    tile = np.zeros((h, w, 3), np.float32)  # 0 in [-1, 1] -> mid-grey 128
    sheet = media.image_grid([[tile, tile], [tile]], pad_px=p, labels=["NMFC", "real"], value_range=(-1, 1))
    top = sheet.shape[0] - (p + 2 * (h + p))
    assert top > 0 and sheet.shape[1] == p + 2 * (w + p)
    band = sheet[:top]
    assert (band < 128).any() and (band == 255).mean() > 0.5  # dark text on the white background
    for r, c in [(0, 0), (0, 1), (1, 0)]:
        y, x = top + p + r * (h + p), p + c * (w + p)
        assert (sheet[y : y + h, x : x + w] == 128).all()
    y, x = top + p + (h + p), p + (w + p)
    assert (sheet[y : y + h, x : x + w] == 255).all()  # the missing tile of the short row is background
    with pytest.raises(ValueError, match="one size"):
        media.image_grid([[tile, np.zeros((h, w + 1, 3))]])

"""Face detection and the one-pass tracker on real clips: MTCNN against facenet, rejections, cuts, the
two-pass reference, bounded memory."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.errors import FaceTooSmall, MultipleFaces, NoFace, TooShort, TrackLost
from pipeline.preprocess import face_track
from pipeline.preprocess.decode import DecodeConfig, check_length, iter_frames, read_frames, video_info
from pipeline.preprocess.face_crop import FaceTrack, crop_faces
from pipeline.preprocess.face_track import (
    detect_faces,
    detection_frames,
    track_and_crop,
    track_and_crop_parts,
)
from pipeline.preprocess.track_parts import Detections, FaceTrackConfig, track_from_detections
from tests.pipeline.preprocess.test_decode import write_video
from tests.pipeline.preprocess.test_track_parts import spans


def test_detection_frames_include_last():
    assert detection_frames(np.arange(12), 5).tolist() == [0, 5, 10, 11]
    assert detection_frames(np.arange(11), 5).tolist() == [0, 5, 10]
    assert detection_frames(np.array([0]), 5).tolist() == [0]


@pytest.fixture(scope="module")
def images(shared_images):
    def load(name):
        return cv2.cvtColor(cv2.imread(str(shared_images / name)), cv2.COLOR_BGR2RGB)

    return load


def test_photo_of_two_people_is_rejected(images, tmp_path):
    people = [images("3ddfa_v2_JianzhuGuo.jpg"), images("deep3dfacerecon_000031.jpg")]
    people = [cv2.resize(p, (round(p.shape[1] * 400 / p.shape[0]), 400)) for p in people]
    path = tmp_path / "two_people.png"
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(people, 1), cv2.COLOR_RGB2BGR))
    with pytest.raises(MultipleFaces, match="another person's face in 1 of 1") as err:
        track_and_crop(path)
    assert err.value.reason == "multiple_faces"
    # Each photo alone is one face.
    cv2.imwrite(str(tmp_path / "one.png"), cv2.cvtColor(people[0], cv2.COLOR_RGB2BGR))
    track, crops = track_and_crop(tmp_path / "one.png")
    assert len(track) == 1 and crops.shape == (1, 256, 256, 3)


def test_no_face_images_are_rejected(tmp_path, shared_videos):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(NoFace, match="no face found in 1 sampled") as err:
        track_and_crop_parts(grey)
    assert err.value.reason == "no_face"
    background = tmp_path / "background.png"  # the right side of a clip, beside the person
    frame = read_frames(shared_videos / "liveportrait_s18.mp4", [0])[0]
    cv2.imwrite(str(background), cv2.cvtColor(frame[:, 900:], cv2.COLOR_RGB2BGR))
    with pytest.raises(NoFace):
        track_and_crop(background)


def test_two_frame_video_is_rejected(tmp_path, images):
    face = cv2.resize(images("liveportrait_d8.jpg"), (256, 256))
    path = write_video(tmp_path / "two.mp4", np.stack([face, face]))
    with pytest.raises(TooShort, match="2 frames"):
        track_and_crop_parts(path)


def test_small_face_is_rejected(tmp_path, images):
    face = cv2.resize(images("liveportrait_d8.jpg"), (120, 120))  # face box ~40 px
    canvas = np.full((480, 480, 3), 90, np.uint8)
    canvas[180:300, 180:300] = face
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    with pytest.raises(FaceTooSmall, match="at least 64 needed"):
        track_and_crop_parts(path)


def test_cut_between_two_people_is_two_parts(tmp_path, images):
    """A video that cuts from one person to another, at another place, is not one track: two parts."""
    a = np.full((480, 480, 3), 60, np.uint8)
    b = a.copy()
    a[20:260, 20:260] = cv2.resize(images("liveportrait_d8.jpg"), (240, 240))  # face box ~95 px
    b[220:460, 220:460] = cv2.resize(images("deep3dfacerecon_000006.jpg"), (240, 240))  # ~80 px
    path = write_video(tmp_path / "cut.mp4", np.stack([a] * 10 + [b] * 10))
    assert spans(track_and_crop_parts(path)) == [(0, 9, "ok"), (10, 19, "ok")]
    with pytest.raises(TrackLost, match="jumps at frame 10"):
        track_and_crop(path)


@pytest.mark.parametrize("name", ["liveportrait_d13", "liveportrait_s18", "dpe_d"])
def test_real_clips_track(shared_videos, name):
    """Portrait, landscape and small clips: one steady track, inside the frame, a plausible size (all 14
    clips are tracked in test_landmarks.py, and in full by its slow test)."""
    decode = DecodeConfig(max_frames=30)
    config = FaceTrackConfig(detect_every=10)  # 4 MTCNN frames per clip keep the test quick
    (part,) = track_and_crop_parts(shared_videos / f"{name}.mp4", decode, config)
    track = part.track
    height, width = track.frame_hw
    assert len(track) == 30 and track.frame_index.tolist() == list(range(30))
    assert part.crops.shape == (30, 256, 256, 3) and part.rejected is None
    assert track.detected.sum() >= 3  # 4 detection frames; one miss is tolerated
    assert np.all(track.box_side_px > 64) and np.all(track.box_side_px < max(height, width))
    assert np.all((track.box_center_px > 0) & (track.box_center_px < [width, height]))
    step = np.linalg.norm(np.diff(track.box_center_px, axis=0), axis=1) / track.box_side_px[1:]
    assert step.max() < 0.05, step.max()


def two_pass_reference(path, decode: DecodeConfig, config: FaceTrackConfig) -> tuple[FaceTrack, np.ndarray]:
    """The slow, obvious tracker: decode the detection frames, run MTCNN on them (the first alone, the
    rest in batches of ``chunk_frames``), link all detections at once, then decode every frame again and
    crop it."""
    info = video_info(path, decode)
    frame_index = check_length(info, decode)
    detect_at = detection_frames(frame_index, config.detect_every)
    boxes, probs = detect_faces(read_frames(path, detect_at[:1], decode), config)
    bound = face_track._smallest_face_bound(boxes[0], probs[0], config)
    for start in range(1, len(detect_at), decode.chunk_frames):
        frames = read_frames(path, detect_at[start : start + decode.chunk_frames], decode)
        more_boxes, more_probs = detect_faces(frames, config, bound)
        boxes, probs = boxes + more_boxes, probs + more_probs
    detections = Detections(detect_at, tuple(boxes), tuple(probs))
    track = track_from_detections(frame_index, detections, (info.height, info.width), config)
    crops = [crop_faces(f, np.searchsorted(frame_index, c), track) for c, f in iter_frames(path, decode)]
    return track, np.concatenate(crops)


def test_one_pass_track_and_crop_matches_the_two_pass_reference(shared_videos):
    """Cropping as frames stream by (each once its smoothed box is final) gives the two-pass result.
    Small chunks put many boxes at chunk edges."""
    decode = DecodeConfig(max_frames=70, chunk_frames=16)
    config = FaceTrackConfig()
    path = shared_videos / "sadtalker_WDA_KatieHill_000.mp4"
    track, crops = track_and_crop(path, decode, config)
    reference, expected = two_pass_reference(path, decode, config)
    # MTCNN's batches differ (per chunk vs per 16 detection frames): float noise only.
    np.testing.assert_allclose(track.crop_center_px, reference.crop_center_px, atol=1e-3)
    np.testing.assert_allclose(track.crop_side_px, reference.crop_side_px, atol=1e-3)
    assert np.array_equal(track.detected, reference.detected)
    assert np.abs(crops.astype(int) - expected.astype(int)).max() <= 1


def test_a_lost_face_cuts_the_track_and_its_frames_are_not_held(tmp_path, images, monkeypatch):
    """The face gone for 35 frames (more than max_gap_frames): a part before, a rejected part for the
    gap, a part after; a single track is rejected. While the face is missing for longer than
    max_gap_frames no frame is held, and never more than a chunk plus the smoothing radius plus
    max_gap_frames."""
    face = np.full((256, 256, 3), 60, np.uint8)
    face[48:208, 48:208] = cv2.resize(images("liveportrait_d8.jpg"), (160, 160))
    empty = np.full_like(face, 60)
    path = write_video(tmp_path / "gone.mp4", np.stack([face] * 30 + [empty] * 35 + [face] * 30))
    decode, config = DecodeConfig(chunk_frames=8), FaceTrackConfig()
    held = []

    def crop_final(linker, pending, crops, cropped_to):
        pending = crop_final_unobserved(linker, pending, crops, cropped_to)
        held.append((linker.lost, sum(len(rows) for rows, _ in pending)))
        return pending

    crop_final_unobserved = face_track._crop_final
    monkeypatch.setattr(face_track, "_crop_final", crop_final)
    # Detections at 0, 10, 20 (face), 30-60 (none), 70, 80, 90, 94 (face).
    parts = track_and_crop_parts(path, decode, config)
    assert spans(parts) == [(0, 20, "ok"), (21, 69, "no_face"), (70, 94, "ok")]
    assert [len(p.crops) for p in parts if p.crops is not None] == [21, 25]
    assert any(lost for lost, _ in held) and all(count == 0 for lost, count in held if lost)
    assert max(count for _, count in held) <= decode.chunk_frames + 12 + config.max_gap_frames
    with pytest.raises(TrackLost, match="face lost for 50 frames"):
        track_and_crop(path, decode, config)


@pytest.mark.parametrize("channels_last", [True, False])
def test_area_resample_is_torch_area_interpolation(channels_last):
    """The summed-area-table resampling behind detect_faces equals facenet's interpolate(mode="area") bit
    for bit, for odd and even regions, up- and downscaling, anywhere in the image."""
    import torch
    from torch.nn.functional import interpolate

    from pipeline.preprocess.mtcnn import area_bounds, area_resample, summed_area_table

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 157, 212, 3), dtype=np.uint8)
    table = summed_area_table(images)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous()
    for size in (12, 24, 48, 51):
        for _ in range(10):
            k = int(rng.integers(3))
            y0, x0 = int(rng.integers(0, 150)), int(rng.integers(0, 200))
            y1, x1 = int(rng.integers(y0 + 1, 158)), int(rng.integers(x0 + 1, 213))
            rows = area_bounds(np.array([y0]), np.array([y1 - y0]), size)
            cols = area_bounds(np.array([x0]), np.array([x1 - x0]), size + 3)
            got = area_resample(table, np.array([k]), rows, cols, channels_last)
            want = interpolate(pixels[k : k + 1, :, y0:y1, x0:x1], size=(size, size + 3), mode="area")
            assert torch.equal(got, (want - 127.5) * 0.0078125), (size, y0, y1, x0, x1)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            assert got.is_contiguous(memory_format=layout)


def test_channels_last_max_pooling_is_exact():
    """detect_faces runs MTCNN's nets channels-last for torch's fast pooling kernel; the pools (all ceil
    mode) must give exactly what they give channels-first, for odd and even sizes."""
    import torch

    for kernel in (2, 3):
        pool = torch.nn.MaxPool2d(kernel, 2, ceil_mode=True)
        for size in (8, 9, 21, 22, 46, 49):
            x = torch.randn(5, 7, size, size + 1)
            assert torch.equal(pool(x.contiguous(memory_format=torch.channels_last)), pool(x))


@pytest.mark.parametrize("name", ["liveportrait_d3", "liveportrait_s18"])
def test_detect_faces_matches_facenet(shared_videos, name):
    """Our MTCNN (own nets with facenet's weights, own NMS, no facenet import) against facenet-pytorch's
    stock MTCNN.detect on real frames: exactly equal with channels-first nets; detect_faces
    (channels-last) equal to rounding, with the same faces."""
    import torch
    from facenet_pytorch import MTCNN

    from pipeline.preprocess.face_track import detect_faces
    from pipeline.preprocess.mtcnn import Mtcnn, detect

    frames = read_frames(shared_videos / f"{name}.mp4", [0, 40, 80])
    height, width = frames.shape[1:3]
    factor = 320 / max(height, width)
    size = (round(width * factor), round(height * factor))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    # MTCNN.detect takes (N, H, W, 3) and permutes it; made contiguous (N, 3, H, W) first, its nets run
    # channels-first, as they did in detect_faces before it ran them channels-last.
    pixels = torch.from_numpy(small).permute(0, 3, 1, 2).float().contiguous().permute(0, 2, 3, 1)
    for smallest_face_px in (0.0, 120.0):
        min_face_size = max(12, int(max(0.7 * 64, smallest_face_px) * factor) // 4 * 4)
        stock = MTCNN(keep_all=True, device="cpu", min_face_size=min_face_size, post_process=False)
        with torch.inference_mode():
            want_boxes, want_probs = stock.detect(pixels)
            exact = detect(Mtcnn(min_face_size), small, channels_last=False)
        boxes, probs = detect_faces(frames, FaceTrackConfig(), smallest_face_px)
        scale = np.array([width / size[0], height / size[1]] * 2)
        for i in range(len(frames)):
            assert want_boxes[i] is not None and len(want_boxes[i]) >= 1
            want_box = np.asarray(want_boxes[i], np.float32)  # facenet returns object arrays
            want_prob = np.asarray(want_probs[i], np.float32)
            np.testing.assert_array_equal(exact[i][:, :4], want_box)
            np.testing.assert_array_equal(exact[i][:, 4], want_prob)
            np.testing.assert_allclose(boxes[i], want_box * scale, atol=0.01)
            np.testing.assert_allclose(probs[i], want_prob, atol=1e-4)


@pytest.mark.parametrize("count", [40, 1500])  # up to 4000 coordinates torchvision offsets, above loops
def test_nms_equals_torchvision_and_facenet(count):
    """Our NMS against torchvision's batched_nms (both of its strategies) and facenet's "Min" NMS, on
    overlapping random boxes from several images, with tied scores."""
    import torch
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy
    from torchvision.ops import batched_nms as torchvision_batched_nms

    from pipeline.preprocess.mtcnn import batched_nms, batched_nms_min

    rng = np.random.default_rng(count)
    corner = rng.uniform(0, 200, (count, 2))
    side = rng.uniform(5, 60, (count, 1))
    boxes = torch.from_numpy(np.concatenate([corner, corner + side], 1).astype(np.float32))
    scores = torch.from_numpy(rng.choice(np.linspace(0.6, 1.0, 50), count).astype(np.float32))  # ties
    images = torch.from_numpy(rng.integers(0, 3, count))
    for threshold in (0.5, 0.7):
        want = torchvision_batched_nms(boxes, scores, images, threshold)
        assert torch.equal(batched_nms(boxes, scores, images, threshold), want)
        want_min = batched_nms_numpy(boxes, scores, images, threshold, "Min")
        assert torch.equal(batched_nms_min(boxes, scores, images, threshold), want_min)


def test_detector_loads_without_torchvision():
    """A preprocessing worker's detector and landmark model load without importing torchvision (or
    facenet-pytorch, which imports it): ~1.9 s of start-up per worker."""
    import subprocess
    import sys

    code = (
        "import sys; from pipeline.preprocess.chain import PreprocessConfig, load_models; "
        "load_models(PreprocessConfig()); "
        "print(sorted(m for m in ('torchvision', 'facenet_pytorch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"

"""Face tracking: linking synthetic detections, crop transforms, rejections, and MTCNN on real clips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.errors import FaceTooSmall, MultipleFaces, NoFace, TooShort, TrackLost
from pipeline.preprocess.decode import DecodeConfig, iter_frames, read_frames
from pipeline.preprocess.face_track import (
    Detections,
    FaceTrackConfig,
    crop_faces,
    detection_frames,
    track_and_crop,
    track_from_detections,
    track_video,
)
from tests.pipeline.preprocess.test_decode import write_video

RAW = FaceTrackConfig(smooth_sigma_frames=0.0)


def box(cx: float, cy: float, side: float) -> np.ndarray:
    """A square detector box (edge coordinates) whose centre is (cx, cy) in pixel-centre coordinates."""
    return np.array([cx + 0.5 - side / 2, cy + 0.5 - side / 2, cx + 0.5 + side / 2, cy + 0.5 + side / 2])


def detections(frames, boxes_per_frame, prob=0.999) -> Detections:
    boxes = tuple(np.array(b, np.float32).reshape(-1, 4) for b in boxes_per_frame)
    return Detections(np.array(frames), boxes, tuple(np.full(len(b), prob, np.float32) for b in boxes))


def test_detection_frames_include_last():
    assert detection_frames(np.arange(12), 5).tolist() == [0, 5, 10, 11]
    assert detection_frames(np.arange(11), 5).tolist() == [0, 5, 10]
    assert detection_frames(np.array([0]), 5).tolist() == [0]


def test_linear_motion_is_interpolated_exactly():
    frame_index = np.arange(21)
    detect_at = detection_frames(frame_index, 5)
    dets = detections(detect_at, [box(100 + 2 * t, 80 - t, 100 + t) for t in detect_at])
    track = track_from_detections(frame_index, dets, (240, 320), RAW)
    np.testing.assert_allclose(
        track.box_center_px, np.stack([100 + 2 * frame_index, 80 - frame_index], 1), atol=1e-4
    )
    np.testing.assert_allclose(track.box_side_px, 100 + frame_index, atol=1e-4)
    np.testing.assert_allclose(track.crop_side_px, RAW.crop_scale * (100 + frame_index), atol=1e-3)
    assert track.detected.tolist() == [t in detect_at for t in frame_index]


def test_smoothing_reduces_detector_noise():
    rng = np.random.default_rng(0)
    frame_index = np.arange(200)
    noisy = [box(150 + rng.normal(0, 4), 120 + rng.normal(0, 4), 100 + rng.normal(0, 3)) for _ in frame_index]
    dets = detections(frame_index, noisy)
    raw = track_from_detections(frame_index, dets, (240, 320), RAW)
    smooth = track_from_detections(frame_index, dets, (240, 320), FaceTrackConfig(smooth_sigma_frames=3.0))
    jitter = lambda t: np.abs(np.diff(t.box_center_px, 2, axis=0)).mean()  # noqa: E731
    assert jitter(smooth) < 0.25 * jitter(raw)
    assert np.abs(smooth.box_center_px - [150, 120]).max() < 6


def test_crop_transforms_round_trip_and_match_the_pixels():
    frame_index = np.arange(3)
    dets = detections(frame_index, [box(100.0, 70.0, 60.0)] * 3)
    config = FaceTrackConfig(smooth_sigma_frames=0.0, crop_size=64, crop_scale=2.0, min_face_px=16)
    track = track_from_detections(frame_index, dets, (160, 200), config)
    points = np.array([[[100.0, 70.0], [40.0, 10.0], [159.5, 129.5]]] * 3)
    crop_points = track.frame_to_crop(points)
    # Crop side 120 frame px -> 64 px: the box centre lands on the crop centre (31.5, 31.5).
    np.testing.assert_allclose(crop_points[0, 0], [31.5, 31.5])
    np.testing.assert_allclose(track.crop_to_frame(crop_points), points)
    matrix = track.frame_to_crop_matrix()[0]
    np.testing.assert_allclose(points[0] @ matrix[:, :2].T + matrix[:, 2], crop_points[0])
    np.testing.assert_allclose(track.face_box_crop_px()[0], [16, 16, 48, 48])
    # A bright blob at frame (x, y) = (112, 60) appears in the crop where frame_to_crop says.
    frame = np.zeros((160, 200, 3), np.uint8)
    cv2.circle(frame, (112, 60), 6, (255, 255, 255), -1)
    crops = crop_faces(np.stack([frame] * 3), np.arange(3), track)
    weights = crops[0, ..., 0].astype(float)
    ys, xs = np.mgrid[:64, :64]
    centroid = [(weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()]
    np.testing.assert_allclose(
        centroid, track.frame_to_crop(np.array([[[112.0, 60.0]]]), [0])[0, 0], atol=0.15
    )


def test_large_downscale_crop_keeps_geometry():
    """The integer pre-shrink of big frames must not shift the crop."""
    frame_index = np.arange(1)
    dets = detections(frame_index, [box(600.0, 400.0, 500.0)])
    track = track_from_detections(frame_index, dets, (900, 1200), FaceTrackConfig(crop_size=64))
    frame = np.zeros((900, 1200, 3), np.uint8)
    cv2.circle(frame, (700, 330), 40, (255, 255, 255), -1)
    crop = crop_faces(frame[None], np.zeros(1, int), track)[0, ..., 0].astype(float)
    ys, xs = np.mgrid[:64, :64]
    centroid = [(crop * xs).sum() / crop.sum(), (crop * ys).sum() / crop.sum()]
    np.testing.assert_allclose(
        centroid, track.frame_to_crop(np.array([[[700.0, 330.0]]]), [0])[0, 0], atol=0.3
    )


def test_rejections_on_synthetic_tracks():
    frame_index = np.arange(30)
    detect_at = detection_frames(frame_index, 5)
    face = box(100, 100, 80)
    with pytest.raises(NoFace, match="no face found in 7 sampled"):
        track_from_detections(frame_index, detections(detect_at, [[]] * 7), (240, 320))
    with pytest.raises(NoFace, match="only 3 of 7"):
        track_from_detections(frame_index, detections(detect_at, [face] * 3 + [[]] * 4), (240, 320))
    with pytest.raises(MultipleFaces, match="another person's face in 7 of 7"):
        track_from_detections(frame_index, detections(detect_at, [[face, box(250, 100, 70)]] * 7), (240, 320))
    with pytest.raises(FaceTooSmall, match="face is 40 px"):
        track_from_detections(frame_index, detections(detect_at, [box(100, 100, 40)] * 7), (240, 320))
    jumping = [face] * 4 + [box(220, 100, 80)] * 3
    with pytest.raises(TrackLost, match="jumps at frame 20") as err:
        track_from_detections(frame_index, detections(detect_at, jumping), (240, 320))
    assert err.value.reason == "track_jump"
    growing = [face] * 4 + [box(100, 100, 160)] * 3
    with pytest.raises(TrackLost, match="size changed x2.00"):
        track_from_detections(frame_index, detections(detect_at, growing), (240, 320))
    long_index = np.arange(100)
    long_at = detection_frames(long_index, 5)
    gap = [face if t < 30 or t > 70 else [] for t in long_at]
    with pytest.raises(TrackLost, match="lost for 50 frames"):
        track_from_detections(long_index, detections(long_at, gap), (240, 320))


def test_tolerated_imperfections():
    frame_index = np.arange(30)
    detect_at = detection_frames(frame_index, 5)
    face = box(100, 100, 80)
    # A small or unsure stray detection in one frame, and one missed detection, keep the video.
    dets = [face, [face, box(280, 200, 20)], [], face, face, face, face]
    track = track_from_detections(frame_index, detections(detect_at, dets), (240, 320))
    assert len(track) == 30 and track.detected.sum() == 6
    np.testing.assert_allclose(track.box_center_px, [[100, 100]] * 30, atol=1e-6)
    # With two sizeable faces the track keeps the one nearest the previous position, not the largest.
    near = [face] + [[box(260, 100, 100), box(104, 100, 80)]] * 6
    config = FaceTrackConfig(max_other_face_fraction=1.0, smooth_sigma_frames=0.0)
    track = track_from_detections(frame_index, detections(detect_at, near), (240, 320), config)
    assert np.abs(track.box_center_px[:, 0] - 102).max() < 2.5


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
        track_video(path)
    assert err.value.reason == "multiple_faces"
    # Each photo alone is one face.
    cv2.imwrite(str(tmp_path / "one.png"), cv2.cvtColor(people[0], cv2.COLOR_RGB2BGR))
    assert len(track_video(tmp_path / "one.png")) == 1


def test_no_face_images_are_rejected(tmp_path, shared_videos):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(NoFace, match="no face found in 1 sampled") as err:
        track_video(grey)
    assert err.value.reason == "no_face"
    background = tmp_path / "background.png"  # the right side of a clip, beside the person
    frame = read_frames(shared_videos / "liveportrait_s18.mp4", [0])[0]
    cv2.imwrite(str(background), cv2.cvtColor(frame[:, 900:], cv2.COLOR_RGB2BGR))
    with pytest.raises(NoFace):
        track_video(background)


def test_two_frame_video_is_rejected(tmp_path, images):
    face = cv2.resize(images("liveportrait_d8.jpg"), (256, 256))
    path = write_video(tmp_path / "two.mp4", np.stack([face, face]))
    with pytest.raises(TooShort, match="2 frames"):
        track_video(path)


def test_small_face_is_rejected(tmp_path, images):
    face = cv2.resize(images("liveportrait_d8.jpg"), (120, 120))  # face box ~40 px
    canvas = np.full((480, 480, 3), 90, np.uint8)
    canvas[180:300, 180:300] = face
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    with pytest.raises(FaceTooSmall, match="at least 64 needed"):
        track_video(path)


def test_cut_between_two_people_is_a_jump(tmp_path, images):
    """A video that cuts from one person to another, at another place, is not one track."""
    a = np.full((320, 320, 3), 60, np.uint8)
    b = a.copy()
    a[20:180, 20:180] = cv2.resize(images("liveportrait_d8.jpg"), (160, 160))
    b[140:300, 140:300] = cv2.resize(images("deep3dfacerecon_000006.jpg"), (160, 160))
    path = write_video(tmp_path / "cut.mp4", np.stack([a] * 10 + [b] * 10))
    with pytest.raises(TrackLost, match="jumps"):
        track_video(path)


@pytest.mark.parametrize("name", ["liveportrait_d13", "liveportrait_s18", "dpe_d"])
def test_real_clips_track(shared_videos, name):
    """Portrait, landscape and small clips: one steady track, inside the frame, a plausible size (all 14
    clips are tracked in test_landmarks.py, and in full by its slow test)."""
    decode = DecodeConfig(max_frames=30)
    config = FaceTrackConfig(detect_every=10)  # 4 MTCNN frames per clip keep the test quick
    track = track_video(shared_videos / f"{name}.mp4", decode, config)
    height, width = track.frame_hw
    assert len(track) == 30 and track.frame_index.tolist() == list(range(30))
    assert track.detected.sum() >= 3  # 4 detection frames; one miss is tolerated
    assert np.all(track.box_side_px > 64) and np.all(track.box_side_px < max(height, width))
    assert np.all((track.box_center_px > 0) & (track.box_center_px < [width, height]))
    step = np.linalg.norm(np.diff(track.box_center_px, axis=0), axis=1) / track.box_side_px[1:]
    assert step.max() < 0.05, step.max()


def test_one_pass_track_and_crop_matches_track_then_crop(shared_videos):
    """Cropping as frames stream by (each once its smoothed box is final) gives the two-pass result:
    track_video, then crop_faces over iter_frames. Small chunks put many boxes at chunk edges."""
    decode = DecodeConfig(max_frames=70, chunk_frames=16)
    path = shared_videos / "sadtalker_WDA_KatieHill_000.mp4"
    track, crops = track_and_crop(path, decode)
    reference = track_video(path, decode)
    expected = np.empty_like(crops)
    for chunk, frames in iter_frames(path, decode):
        rows = reference.rows(chunk)
        expected[rows] = crop_faces(frames, rows, reference)
    # MTCNN's batches differ (per chunk vs per 16 detection frames): float noise only.
    np.testing.assert_allclose(track.crop_center_px, reference.crop_center_px, atol=1e-3)
    np.testing.assert_allclose(track.crop_side_px, reference.crop_side_px, atol=1e-3)
    assert np.array_equal(track.detected, reference.detected)
    assert np.abs(crops.astype(int) - expected.astype(int)).max() <= 1


def test_one_pass_rejects_a_lost_face_like_track_video(tmp_path, images):
    """The face gone for longer than max_gap_frames: the one-pass path (which then stops keeping frames;
    that memory bound itself is not observed here) gives track_video's reason and message; a face that
    is back later does not rescue the video."""
    face = np.full((256, 256, 3), 60, np.uint8)
    face[48:208, 48:208] = cv2.resize(images("liveportrait_d8.jpg"), (160, 160))
    empty = np.full_like(face, 60)
    path = write_video(tmp_path / "gone.mp4", np.stack([face] * 30 + [empty] * 35 + [face] * 30))
    decode = DecodeConfig(chunk_frames=8)
    with pytest.raises(TrackLost, match="face lost for") as expected:
        track_video(path, decode)
    with pytest.raises(TrackLost, match="face lost for") as got:
        track_and_crop(path, decode)
    assert str(got.value) == str(expected.value)


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

"""Real-time reenactment: frames come one at a time (a webcam, a stream URL, or a file played at its frame
rate) and reenacted frames go out with bounded latency.

Per frame: the face box (MTCNN every ``detect_every`` frames, the box followed and smoothed in between, no
look-ahead), the square crop, 68 landmarks, the per-frame 3DMM fit (``online_fit``: the driver's identity
fixed after ``online.warmup_frames`` frames, camera and expression warm-started from the previous frame),
the driving signal smoothed, the pose carried over to the person's framing, the NMFC image, one generator
step (``synthesis.StreamingSynthesizer``) and the composite. A warning is logged once when the driver's
head pose leaves the range the person was fine-tuned on.

Two threads pipeline the stages: the analysis (track, landmarks, fit, NMFC) of frame t + 1 runs while the
generator synthesises frame t, so the throughput is set by the slower half, and a frame's latency (from its
arrival to its output) is the sum of both. ``run_stream`` reports both, and each stage's time per frame.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from model.face3d.camera import SCALE, TX, TY
from model.face3d.morphable_model import MorphableModel
from pipeline import media
from pipeline.finetune.person_model import PersonModel
from pipeline.preprocess.face_crop import FaceTrack, crop_faces
from pipeline.preprocess.face_track import detect_faces
from pipeline.preprocess.fit_3dmm import FitConfig, fit_config_for
from pipeline.preprocess.landmarks import FrameLandmarks, LandmarkConfig
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer
from pipeline.preprocess.track_parts import FaceTrackConfig
from pipeline.reenact.conditioning import carry_pose, pose_outside_range, rescale_cameras
from pipeline.reenact.online_fit import OnlineFitConfig, OnlineFitter
from pipeline.reenact.synthesis import StreamingSynthesizer


@dataclass(frozen=True)
class StreamConfig:
    """detect_every: frames between MTCNN detections (the box is followed in between).
    box_smoothing: weight of the previous box in its exponential smoothing (0: none).
    signal_smoothing: weight of the previous expression and pose in theirs (0: none).
    pose_margin_deg: how far beyond the 1st-99th percentile of the person's training poses a driver may
        turn before the warning.
    queue_frames: frames that may wait between the two halves of the pipeline (bounds latency).
    """

    detect_every: int = 5
    box_smoothing: float = 0.5
    signal_smoothing: float = 0.3
    pose_margin_deg: float = 5.0
    queue_frames: int = 2
    track: FaceTrackConfig = field(default_factory=FaceTrackConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    online: OnlineFitConfig = field(default_factory=OnlineFitConfig)


def frames_from(source: str, realtime: bool = True) -> Iterator[np.ndarray]:
    """RGB frames (H, W, 3) uint8 of a webcam (its index, e.g. "0"), a stream URL or a file; a file is
    played at its frame rate when ``realtime``."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise ValueError(f"--source {source}: cannot open it as a webcam index, stream URL or video file")
    period = 1.0 / (capture.get(cv2.CAP_PROP_FPS) or 25.0)
    next_time = time.perf_counter()
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if realtime and not source.isdigit():
                next_time += period
                time.sleep(max(0.0, next_time - time.perf_counter()))
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


class StreamAnalyzer:
    """The first half: frame -> (crop (S, S, 3) uint8, NMFC (3, P, P) in [-1, 1]) or None while warming up
    (the first ``online.warmup_frames`` frames are kept, and returned together once the identity is fixed).
    ``seconds`` holds each stage's total time."""

    def __init__(
        self, person: PersonModel, model: MorphableModel, cfg: StreamConfig, device: torch.device,
        log: Callable[[str], None] = print,
    ) -> None:  # fmt: skip
        self.person, self.model, self.cfg, self.log = person, model, cfg, log
        self.size = int(person.info["image_px"])
        self.landmarks = FrameLandmarks(cfg.landmarks)
        self.fitter = OnlineFitter(model, fit_config_for(cfg.fit, cfg.landmarks.backend), cfg.online)
        self.renderer = NmfcRenderer(model, NmfcConfig(image_size=(self.size, self.size)), device=device)
        self.seconds: dict[str, float] = defaultdict(float)
        self.box: np.ndarray | None = None  # (cx, cy, side) frame pixels, smoothed
        self.count = 0
        self.warmup: list[tuple[np.ndarray, np.ndarray]] = []
        self.signal: tuple[np.ndarray, np.ndarray] | None = None
        self.reference: np.ndarray | None = None  # (7,) the driver's mean camera over the warm-up
        self.warned = False

    def _timed(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - start
        return now

    def _crop(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The face crop and the face box in it (MTCNN every detect_every frames, smoothed)."""
        cfg = self.cfg.track
        if self.box is None or self.count % self.cfg.detect_every == 0:
            boxes, _ = detect_faces(frame[None], cfg)
            if len(boxes[0]):
                x0, y0, x1, y1 = boxes[0][0]
                found = np.array([(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)])
                a = self.cfg.box_smoothing if self.box is not None else 0.0
                self.box = found if self.box is None else a * self.box + (1 - a) * found
            elif self.box is None:
                raise ValueError("no face in the first frame of the stream")
        cx, cy, side = self.box
        track = FaceTrack(
            frame_index=np.zeros(1, np.int64),
            box_center_px=np.array([[cx, cy]]),
            box_side_px=np.array([side]),
            crop_center_px=np.array([[cx, cy + cfg.crop_shift_y * side]]),
            crop_side_px=np.array([cfg.crop_scale * side]),
            detected=np.ones(1, bool),
            crop_size=cfg.crop_size,
            frame_hw=frame.shape[:2],
        )
        crop = crop_faces(frame[None], np.zeros(1, np.int64), track)
        return crop, track.face_box_crop_px().astype(np.float32)

    def _nmfc(self, expression: np.ndarray, camera: np.ndarray, crop_px: int) -> torch.Tensor:
        """The person's identity with the driver's expression and head pose carried over as the batch path
        does (``conditioning.carry_pose``, the rules of ``adapt_pose``), with the driver's warm-up frames as
        its reference: the driver's scale and translation relative to their mean, applied to the person's
        mean framing and clamped to the person's range. camera (7,) in driver crop pixels (``crop_px``) ->
        NMFC (3, P, P) in [-1, 1]."""
        stats = self.person.statistics
        # The driver's camera and reference to the person's crop pixels, where the person's cameras are.
        driver = torch.as_tensor(np.stack([camera, self.reference]), dtype=torch.float64)
        driver = rescale_cameras(driver, crop_px, stats.crop_px)
        reference = driver[1]
        adapted = carry_pose(driver[:1], reference[SCALE], reference[[TX, TY]], stats.cameras.double(), 0.0)
        params = (
            stats.identity_coefficients[None].float(),
            torch.as_tensor(expression, dtype=torch.float32)[None],
            rescale_cameras(adapted, stats.crop_px, self.size).float(),  # to the generator's size
        )
        image = self.renderer.render(*params, uint8=True).image[0]
        return image.permute(2, 0, 1).float() / 127.5 - 1

    def _check_pose(self, camera: np.ndarray) -> None:
        if not self.warned:
            warning = pose_outside_range(self.person.statistics.pose, camera, self.cfg.pose_margin_deg)
            if warning:
                self.log(warning)
                self.warned = True

    def __call__(self, frame: np.ndarray) -> list[tuple[np.ndarray, torch.Tensor]]:
        """The analysed frames ready for synthesis: none while warming up, then the warm-up frames at once,
        then one per call."""
        t = time.perf_counter()
        crop, box = self._crop(frame)
        self.count += 1
        t = self._timed("track_s", t)
        landmarks = self.landmarks(crop, box)
        t = self._timed("landmarks_s", t)
        size = crop.shape[1]
        if self.fitter.identity is None:
            self.warmup.append((crop[0], landmarks))
            if len(self.warmup) < self.cfg.online.warmup_frames:
                return []
            expressions, cameras = self.fitter.start(np.stack([lm for _, lm in self.warmup]))
            self.reference = cameras.mean(0)
            t = self._timed("fit_s", t)
            out = [(c, self._nmfc(e, k, size)) for (c, _), e, k in zip(self.warmup, expressions, cameras)]
            self.signal = (expressions[-1], cameras[-1])
            self._timed("nmfc_s", t)
            self.warmup = []
            return out
        expression, camera = self.fitter.fit(landmarks)
        a = self.cfg.signal_smoothing
        expression = a * self.signal[0] + (1 - a) * expression
        camera = a * self.signal[1] + (1 - a) * camera
        self.signal = (expression, camera)
        self._check_pose(camera)
        t = self._timed("fit_s", t)
        nmfc = self._nmfc(expression, camera, size)
        self._timed("nmfc_s", t)
        return [(crop[0], nmfc)]


def run_stream(
    frames: Iterator[np.ndarray],
    person: PersonModel,
    model: MorphableModel,
    cfg: StreamConfig = StreamConfig(),
    device: torch.device | str = "cpu",
    sink: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Reenacts a stream: ``sink(crop, nmfc, result)`` (uint8 images) gets each output as soon as it is
    ready. Returns the throughput (output frames/s over the run, warm-up excluded), the latency per frame
    (arrival to output: mean and 95th percentile, ms) and each stage's time per frame (ms)."""
    device = torch.device(device)
    analyzer = StreamAnalyzer(person, model, cfg, device, log)
    synthesizer = StreamingSynthesizer(person.generator)
    background = person.statistics.background.numpy()
    background = cv2.resize(background, (analyzer.size, analyzer.size), interpolation=cv2.INTER_AREA)
    background = torch.from_numpy(background).permute(2, 0, 1).float().to(device) / 127.5 - 1
    pending: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
    latencies: list[float] = []
    synthesis_s = [0.0]
    outputs = [0]
    first_output: list[float] = []

    def synthesise() -> None:
        while (item := pending.get()) is not None:
            arrived, crop, nmfc = item
            t = time.perf_counter()
            frame, mask = synthesizer.step(nmfc)
            result = mask * frame + (1 - mask) * background
            synthesis_s[0] += time.perf_counter() - t
            if sink is not None:
                sink(crop, media.generator_images(nmfc), media.generator_images(result))
            done = time.perf_counter()
            latencies.append(done - arrived)
            outputs[0] += 1
            if not first_output:
                first_output.append(done)

    worker = threading.Thread(target=synthesise, daemon=True)
    worker.start()
    start = time.perf_counter()
    try:
        for frame in frames:
            arrived = time.perf_counter()
            for crop, nmfc in analyzer(frame):
                pending.put((arrived, crop, nmfc))
    finally:
        pending.put(None)
        worker.join()
    end = time.perf_counter()
    steady = latencies[cfg.online.warmup_frames :] or latencies
    window = end - (first_output[0] if first_output else start)
    per_frame = {k: round(1000 * v / max(analyzer.count, 1), 2) for k, v in analyzer.seconds.items()}
    per_frame["synthesis_ms"] = round(1000 * synthesis_s[0] / max(outputs[0], 1), 2)
    return {
        "frames": outputs[0],
        "frames_per_s": round((outputs[0] - len(latencies) + len(steady)) / max(window, 1e-9), 2),
        "latency_ms_mean": round(1000 * float(np.mean(steady)), 1) if steady else None,
        "latency_ms_p95": round(1000 * float(np.percentile(steady, 95)), 1) if steady else None,
        "stage_ms_per_frame": {k.replace("_s", "_ms"): v for k, v in per_frame.items()},
        "pose_warning": analyzer.warned,
    }

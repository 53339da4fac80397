"""The default dataset's clips as the pipeline hands them to the model, built in-process.

Used by cue_experiment.py and supervised_ceiling.py (benchmarks/ is sys.path[0] when they run).
A clip starts from the generator's own content for a video (`vatt.data.synthetic.howto_video`
and `ucf_video`: each scene rendered once at the raw FPS, the code path `generate` writes
through) and goes through the pipeline's own rules:
- ingestion's frame rate and size: `vatt.data.media.resample_frames` (the frame shown at
  t = k / data.fps is the last raw frame starting at or before t; short side data.frame_size);
- ingestion's audio resampling (torchaudio's sinc kernel, which ingestion's resampler equals on
  files under 20 s);
- ingestion's cutting: `vatt.data.ingest._cut` (3.2 s clips of a pretraining video, each with
  its data.num_text_candidates nearest narrations; a labelled video is one clip);
- the loader's windows of data.num_frames: a random one with training's crop, flip, jitter and
  audio noise (`training_window`), or the evaluation's data.eval_num_windows evenly spread
  windows, centre crop (`evaluation_windows`).
No codec: the generated files' H.264 / MPEG-4 and AAC and the stored clips' MJPEG are skipped,
so the frames differ from the pipeline's by codec error only
(tests/test_benchmark_synthetic_clips.py), and a labelled video's audio is its mono track (its
AVI file adds a second channel that ingestion down-mixes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vatt.data import synthetic as S
from vatt.data.ingest import _cut, ingest_params
from vatt.data.loader import ClipSpec, _audio_window, _spatial, _window_starts
from vatt.data.media import resample_frames
from vatt.data.sources import ClipSpec as CutSpec, WorkItem


@dataclass
class Clip:
    """One clip as ingestion stores it (before its MJPEG and WAV encoding)."""
    frames: np.ndarray  # (N, h, w, 3) uint8 at data.fps, ingestion's size
    audio: np.ndarray  # (S,) float32 at data.sample_rate, the clip's span
    captions: list[str]  # a pretraining clip's nearest narrations; none for a labelled one
    label: int  # a labelled clip's motion (index into S.MOTIONS); -1 for pretraining
    scene: S.Scene  # the scene it shows (a pretraining clip is one scene of its video)


def _resampled_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import torch
    import torchaudio

    wave = torchaudio.functional.resample(torch.from_numpy(audio), S.RATE, sample_rate)
    return wave.clamp(-1.0, 1.0).numpy()


def _clips(cfg, video: S.Video, item: WorkItem) -> list[Clip]:
    """Ingestion's clips of one video (vatt.data.ingest: `_cut`, then frames
    round(start * fps) to round(end * fps) and the same span of audio)."""
    params = ingest_params(cfg)
    fps, rate = params.fps, params.sample_rate
    frames = resample_frames(video.frames, S.FPS, fps=fps, short_side=params.short_side)
    audio = _resampled_audio(video.audio, rate)
    duration = len(video.frames) / S.FPS
    scene_ends = np.cumsum([scene.duration for scene in video.scenes])
    out = []
    for spec, _ in _cut(item, duration, params):
        end = duration if spec.end is None else min(spec.end, duration)
        if end - spec.start < params.min_seconds:
            continue  # ingestion reports it and stores no clip
        scene = video.scenes[min(len(video.scenes) - 1,
                                 int(np.searchsorted(scene_ends, spec.start + 1e-6,
                                                     side="right")))]
        out.append(Clip(frames[int(round(spec.start * fps)):int(round(end * fps))],
                        audio[int(round(spec.start * rate)):int(round(end * rate))],
                        list(spec.captions), spec.label, scene))
    return out


def pretraining_clips(cfg, seed: int, indices, cue: str) -> list[Clip]:
    """The clips ingestion cuts from pretraining videos `indices` of the dataset of `seed`
    (the HowTo100M-style layout's synth<index>.mp4), with the captions it attaches."""
    out = []
    for index in indices:
        video = S.howto_video(seed, index, cue)
        item = WorkItem(f"synth{index:05d}", f"videos/synth{index:05d}.mp4", "train", None,
                        video.narration)
        out += _clips(cfg, video, item)
    return out


def labelled_clips(cfg, seed: int, indices, cue: str) -> list[Clip]:
    """Labelled videos `indices` of the dataset of `seed` (the UCF101-style layout's videos;
    video `index` shows motion index % 8), one clip each as ingestion stores them."""
    out = []
    for index in indices:
        label = index % len(S.MOTIONS)
        video = S.ucf_video(seed, index, label, cue)
        item = WorkItem(f"ucf{index}", f"ucf{index}.avi", "train", [CutSpec(label=label)])
        out += _clips(cfg, video, item)
    return out


def training_window(clip: Clip, spec: ClipSpec, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(video (T, S, S, 3) uint8, audio (A,) float32) of one training window, drawn as the
    loader draws it (`decode_clip` with spec.training: window, crop and flip, jitter, noise)."""
    start = _window_starts(len(clip.frames), spec, rng)[0]
    video = _spatial(_frames(clip, start, spec), rng, spec)
    return video, _audio_window(clip.audio, start, rng, spec)


def evaluation_windows(clip: Clip, spec: ClipSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """The evaluation's views of a clip (`decode_clip` without spec.training, one crop): its
    spec.num_windows evenly spread windows, centre crop."""
    return [(_spatial(_frames(clip, start, spec), None, spec),
             _audio_window(clip.audio, start, None, spec))
            for start in _window_starts(len(clip.frames), spec, None)]


def _frames(clip: Clip, start: int, spec: ClipSpec) -> np.ndarray:
    """spec.num_frames frames from `start`, the last one repeated past the clip's end (as
    `decode_clip` does)."""
    last = len(clip.frames) - 1
    return clip.frames[[min(j, last) for j in range(start, start + spec.num_frames)]]

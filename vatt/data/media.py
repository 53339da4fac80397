"""Decoding, normalising and encoding media with PyAV (bundled FFmpeg) and torchaudio.

Ingestion decodes a raw file once (`load_media`: frames resampled to the configured fps and
short side, audio down-mixed to mono and resampled with torchaudio), cuts clips from it and
stores each clip as an MJPEG MP4 (video) and a 16-bit PCM WAV (audio), both encoded
deterministically so that re-runs give byte-identical shards. The loader decodes those clip
files back with `decode_video` / `decode_wav`.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np

# a decoded stream shorter than this share of its declared duration counts as truncated
MIN_DECODED_SHARE = 0.9


class MediaError(Exception):
    """A media file that cannot be ingested; str(err) is the reason shown in the report."""


@dataclass
class Media:
    frames: Optional[np.ndarray]  # (N, H, W, 3) uint8 at `fps`, frame k shows time k / fps
    audio: Optional[np.ndarray]  # (S,) float32 in [-1, 1] at `sample_rate`, sample 0 at time 0
    fps: float
    sample_rate: int
    duration: float  # seconds

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


def _aligned(x: float) -> int:
    """Stored frame sides are multiples of 16: with unaligned rows (e.g. 86 px) the RGB -> YUV
    conversion reads varying padding bytes and the encoded clips stop being byte-identical."""
    return max(16, int(round(x / 16.0)) * 16)


def _pick_frames(times: list[float], frames: list[np.ndarray], fps: float) -> tuple[np.ndarray, float]:
    """Resample decoded frames (any rate, possibly variable) to a constant `fps`."""
    if not frames:
        raise MediaError("video stream holds no decodable frame")
    step = (times[-1] - times[0]) / max(1, len(times) - 1) if len(times) > 1 else 1.0 / fps
    end = times[-1] + step
    targets = np.arange(max(1, int(np.floor(end * fps + 1e-6)))) / fps
    # the frame shown at time t is the last one that starts at or before t
    idx = np.clip(np.searchsorted(np.asarray(times), targets + 1e-6, side="right") - 1,
                  0, len(frames) - 1)
    return np.stack([frames[i] for i in idx]), end


def _mono_audio(chunks: list[np.ndarray], start: float, rate: int,
                sample_rate: int) -> tuple[np.ndarray, float]:
    import torch
    import torchaudio.functional as AF

    if not chunks:
        raise MediaError("audio stream holds no decodable sample")
    mono = np.concatenate(chunks).astype(np.float32)
    lead = int(round(start * rate))
    mono = np.pad(mono, (lead, 0)) if lead > 0 else mono[-lead:]
    duration = len(mono) / rate
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate).numpy()
    return np.clip(mono, -1.0, 1.0).astype(np.float32), duration


def load_media(path: str | Path, *, fps: float, short_side: int, sample_rate: int,
               video: str = "required", audio: str = "required") -> Media:
    """Decode and normalise one raw file; raises MediaError with the reason it is unusable.

    `video` is "required", "optional" (decoded when present) or "none" (ignored); `audio` is
    "required" or "optional".
    """
    need_video, need_audio = video == "required", audio == "required"
    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise MediaError(f"unreadable: {err}") from None
    with container:
        v_stream = container.streams.video[0] if container.streams.video else None
        a_stream = container.streams.audio[0] if container.streams.audio else None
        if need_video and v_stream is None:
            raise MediaError("no video stream")
        if need_audio and a_stream is None:
            raise MediaError("no audio stream (this source needs audio)")
        if video == "none":
            v_stream = None
        if v_stream is None and a_stream is None:
            raise MediaError("no video or audio stream")
        declared = container.duration / av.time_base if container.duration else None
        streams = [s for s in (v_stream, a_stream) if s is not None]
        starts = [s.start_time * s.time_base for s in streams if s.start_time is not None]
        t0 = float(min(starts)) if starts else 0.0
        times: list[float] = []
        images: list[np.ndarray] = []
        size: Optional[tuple[int, int]] = None
        chunks: list[np.ndarray] = []
        a_start: Optional[float] = None
        resampler = av.AudioResampler(format="fltp")  # planar float; rate and layout kept
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if frame.time is None:
                        continue
                    if packet.stream is v_stream:
                        if size is None:
                            scale = short_side / min(frame.width, frame.height)
                            size = (_aligned(frame.width * scale), _aligned(frame.height * scale))
                        times.append(frame.time - t0)
                        images.append(frame.to_ndarray(width=size[0], height=size[1],
                                                       format="rgb24", interpolation="AREA"))
                    else:
                        if a_start is None:
                            a_start = frame.time - t0
                        for out in resampler.resample(frame):
                            chunks.append(out.to_ndarray().mean(axis=0))  # (ch, n) -> mono
        except av.FFmpegError as err:
            raise MediaError(f"corrupt or truncated: decoding failed: {err}") from None
        rate = a_stream.rate if a_stream is not None else 0
    frames = audio = None
    duration = 0.0
    if v_stream is not None:
        frames, duration = _pick_frames(times, images, fps)
    if a_stream is not None:
        audio, a_dur = _mono_audio(chunks, a_start or 0.0, rate, sample_rate)
        duration = max(duration, a_dur)
    if declared and duration < MIN_DECODED_SHARE * declared:
        raise MediaError(f"truncated: decoded {duration:.2f} s of the {declared:.2f} s declared")
    return Media(frames, audio, fps, sample_rate, duration)


def encode_video(frames: np.ndarray, fps: float, qmax: int = 4) -> bytes:
    """(N, H, W, 3) uint8 -> MJPEG-in-MP4 bytes, byte-reproducible.

    MJPEG, not H.264: libx264's output was seen to change with the process's heap contents
    (same frames, different bytes), which breaks identical re-runs; MJPEG is intra-only,
    deterministic and fast to decode, at about 1.5x the size of H.264 for these clips."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mjpeg", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuvj420p"
        stream.codec_context.thread_count = 1
        stream.options = {"qmin": "1", "qmax": str(qmax)}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_video(data: bytes, indices: Optional[list[int]] = None) -> np.ndarray:
    """MP4 bytes -> (N, H, W, 3) uint8: every frame, or only frames `indices` (sorted, unique)
    in that order. Stored clips are intra-only (MJPEG), so frames outside `indices` are not
    decoded at all; for other codecs every frame is decoded and the wanted ones kept."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if indices is None:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        wanted = set(indices)
        intra = stream.codec_context.name == "mjpeg"
        out = []
        for number, packet in enumerate(container.demux(stream)):
            if packet.size == 0:
                continue
            if intra and number not in wanted:
                continue
            for frame in packet.decode():
                if number in wanted:
                    out.append(frame.to_ndarray(format="rgb24"))
            if number >= indices[-1]:
                break
        if len(out) != len(indices):
            raise ValueError(f"clip holds fewer frames than the {indices[-1] + 1} its record says")
        return np.stack(out)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """(S,) float in [-1, 1] -> mono 16-bit PCM WAV bytes."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buf.getvalue()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono 16-bit WAV bytes -> ((S,) float32 in [-1, 1], sample rate)."""
    with wave.open(io.BytesIO(data), "rb") as src:
        rate = src.getframerate()
        pcm = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32767.0, rate

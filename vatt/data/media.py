"""Decoding, normalising and encoding media with PyAV (bundled FFmpeg) and torchaudio.

Ingestion decodes a raw file once, as a stream (`MediaDecoder.pieces`: frames resampled to the
configured fps and short side, audio down-mixed to mono and resampled with torchaudio's sinc
kernel), cuts clips from it as they complete and stores each clip as an MJPEG MP4 (video) and a
16-bit PCM WAV (audio), both encoded deterministically so that re-runs give byte-identical
shards. Memory stays bounded by a clip plus one audio-resampling span (AUDIO_CHUNK_SECONDS),
whatever the file's length; `load_media` puts the pieces of a whole file together (the same
numbers; `resample_frames` applies the same rate and size to frames that were never
encoded). Still images (ImageNet) are decoded with Pillow by `load_image` and stored as
one-frame clips the same way. The loader decodes the clip files back with `decode_video` /
`decode_wav`.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import av
import numpy as np

# a decoded stream shorter than this share of its declared duration counts as truncated
MIN_DECODED_SHARE = 0.9
# audio is resampled in spans of this much input (see _MonoResampler): a file with less audio
# is resampled in one piece
AUDIO_CHUNK_SECONDS = 20.0


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


def _output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) a frame is resized to: short side `short_side`, aspect kept, aligned."""
    scale = short_side / min(width, height)
    return _aligned(width * scale), _aligned(height * scale)


class _ConstantRate:
    """Resamples decoded frames (any rate, possibly variable) to a constant `fps` as they come:
    the frame shown at target time t = k / fps is the last one that starts at or before t
    (targets before the first frame show the first), so a target is settled as soon as a later
    frame has arrived, and only the latest decoded frame is held."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.first_time: Optional[float] = None
        self.last: Optional[tuple[float, np.ndarray]] = None  # (time, image)
        self.count = 0  # decoded frames seen
        self.emitted = 0  # target frames settled

    def push(self, time: float, image: np.ndarray) -> list[np.ndarray]:
        shown = self.last[1] if self.last is not None else image
        out = []
        while self.emitted / self.fps + 1e-6 < time:
            out.append(shown)
            self.emitted += 1
        if self.first_time is None:
            self.first_time = time
        self.last = (time, image)
        self.count += 1
        return out

    def finish(self) -> tuple[list[np.ndarray], float]:
        """The remaining target frames and the video's end time (its last frame lasts as long
        as the mean frame interval)."""
        if self.last is None:
            raise MediaError("video stream holds no decodable frame")
        last_time, image = self.last
        step = ((last_time - self.first_time) / max(1, self.count - 1) if self.count > 1
                else 1.0 / self.fps)
        end = last_time + step
        total = max(1, int(np.floor(end * self.fps + 1e-6)))
        out = [image] * (total - self.emitted)
        self.emitted = total
        return out, end


class _MonoResampler:
    """Mono audio at the source rate in, at `sample_rate` out, as it comes: torchaudio's sinc
    resampling (`torchaudio.functional.resample`'s kernel and padding), applied to fixed spans of
    AUDIO_CHUNK_SECONDS of input counted from the first sample, so every output sample is the
    same number whatever the pace of the decode. Input that fits in one span is resampled in
    one piece, exactly as `torchaudio.functional.resample` does it."""

    def __init__(self, rate: int, sample_rate: int, lead: int) -> None:
        import torch
        import torchaudio.transforms as AT

        self.length = 0  # input samples taken (after the lead)
        self.skip = -lead if lead < 0 else 0  # input starts before time 0: dropped
        self.passthrough = rate == sample_rate
        self.pending: list[np.ndarray] = [np.zeros(lead, np.float32)] if lead > 0 else []
        if self.passthrough:
            return
        kernel = AT.Resample(rate, sample_rate, dtype=torch.float32)
        self.kernel, self.width = kernel.kernel, kernel.width  # (new, 1, taps), taps = 2 w + orig
        self.orig, self.new = rate // kernel.gcd, sample_rate // kernel.gcd
        self.span = max(1, int(np.ceil(AUDIO_CHUNK_SECONDS * rate / self.orig)))  # blocks
        # the padded input (`width` zeros before the first sample) from the unresampled span on
        self.buffer = np.zeros(self.width, np.float32)
        self.spans = 0  # spans resampled
        self.out = 0  # output samples produced

    def _blocks(self, data: np.ndarray) -> np.ndarray:
        """conv1d of a piece of the padded input: (..,) -> (blocks * new,)"""
        import torch

        signal = torch.from_numpy(np.ascontiguousarray(data))[None, None]  # (1, 1, samples)
        out = torch.nn.functional.conv1d(signal, self.kernel, stride=self.orig)  # (1, new, blocks)
        return out.transpose(1, 2).reshape(-1).numpy()

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Take input samples; return the output samples they settle."""
        if self.skip:
            dropped = min(self.skip, len(samples))
            samples, self.skip = samples[dropped:], self.skip - dropped
        data = np.concatenate(self.pending + [samples]).astype(np.float32)
        self.pending = []
        self.length += len(data)
        if self.passthrough:
            return np.clip(data, -1.0, 1.0)
        self.buffer = np.concatenate([self.buffer, data])
        reads = (self.span - 1) * self.orig + self.kernel.shape[-1]  # padded input one span reads
        pieces = []
        # a span is settled once all the input its last block reads is there
        while self.length >= (self.spans + 1) * self.span * self.orig + self.width:
            pieces.append(self._blocks(self.buffer[:reads]))
            self.buffer = self.buffer[self.span * self.orig:]
            self.spans += 1
        self.out += sum(len(p) for p in pieces)
        return np.clip(np.concatenate(pieces), -1.0, 1.0) if pieces else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """The remaining output samples (the input has ended)."""
        import torch

        if self.passthrough or self.length == 0:
            return np.zeros(0, np.float32)
        tail = np.concatenate([self.buffer, np.zeros(self.width + self.orig, np.float32)])
        # torchaudio's output length, computed as it does (in float32)
        target = int(torch.ceil(torch.as_tensor(self.new * self.length / self.orig)))
        rest = self._blocks(tail)[:target - self.out]
        self.out += len(rest)
        return np.clip(rest, -1.0, 1.0)


class MediaDecoder:
    """Decodes and normalises one raw file piece by piece, in memory bounded by the pieces:

        with MediaDecoder(path, fps=10, short_side=224, sample_rate=48000) as decoder:
            for frames, audio in decoder.pieces():   # lists of (H, W, 3) uint8, (S,) float32
                ...
            decoder.duration                          # seconds, once the pieces are exhausted

    Frames come at `fps` (frame k shows time k / fps) at the short side `short_side` (aspect
    kept), audio as mono float32 in [-1, 1] at `sample_rate` (sample 0 at time 0); the pieces
    put together are what `load_media` returns. Opening raises MediaError when a required
    stream is missing; `pieces()` raises it when the decode fails or the file is truncated."""

    def __init__(self, path: str | Path, *, fps: float, short_side: int, sample_rate: int,
                 video: str = "required", audio: str = "required") -> None:
        self.fps, self.short_side, self.sample_rate = fps, short_side, sample_rate
        self.duration: Optional[float] = None
        self._frames: Optional[_ConstantRate] = None
        self._audio: Optional[_MonoResampler] = None
        self._monotonic = True  # frame times never went backwards (then the last is the latest)
        path = Path(path)
        if path.stat().st_size == 0:
            raise MediaError("empty file (0 bytes)")
        try:
            self.container = av.open(str(path))
        except av.FFmpegError as err:
            raise MediaError(f"unreadable: {err}") from None
        streams = self.container.streams
        self.v_stream = streams.video[0] if streams.video else None
        self.a_stream = streams.audio[0] if streams.audio else None
        problem = None
        if video == "required" and self.v_stream is None:
            problem = "no video stream"
        elif audio == "required" and self.a_stream is None:
            problem = "no audio stream (this source needs audio)"
        if video == "none":
            self.v_stream = None
        if problem is None and self.v_stream is None and self.a_stream is None:
            problem = "no video or audio stream"
        if problem:
            self.container.close()
            raise MediaError(problem)

    @property
    def has_video(self) -> bool:
        return self.v_stream is not None

    @property
    def lasts_at_least(self) -> float:
        """Seconds the media surely lasts, from what has been decoded so far (its duration
        is the longer of the video, which ends after its last frame, and the audio)."""
        seconds = 0.0
        if self._frames is not None and self._frames.last is not None and self._monotonic:
            seconds = self._frames.last[0]
        if self._audio is not None:
            seconds = max(seconds, self._audio.length / self.a_stream.rate)
        return seconds

    @property
    def has_audio(self) -> bool:
        return self.a_stream is not None

    def __enter__(self) -> "MediaDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def pieces(self) -> Iterator[tuple[list[np.ndarray], Optional[np.ndarray]]]:
        container, v_stream, a_stream = self.container, self.v_stream, self.a_stream
        declared = container.duration / av.time_base if container.duration else None
        streams = [s for s in (v_stream, a_stream) if s is not None]
        starts = [s.start_time * s.time_base for s in streams if s.start_time is not None]
        t0 = float(min(starts)) if starts else 0.0
        frames = self._frames = _ConstantRate(self.fps)
        size: Optional[tuple[int, int]] = None
        resampler = av.AudioResampler(format="fltp")  # planar float; rate and layout kept
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if frame.time is None:
                        continue
                    if packet.stream is v_stream:
                        if size is None:
                            size = _output_size(frame.width, frame.height, self.short_side)
                        image = frame.to_ndarray(width=size[0], height=size[1], format="rgb24",
                                                 interpolation="AREA")
                        if frames.last is not None and frame.time - t0 < frames.last[0]:
                            self._monotonic = False
                        yield frames.push(frame.time - t0, image), None
                    else:
                        if self._audio is None:
                            lead = int(round((frame.time - t0) * a_stream.rate))
                            self._audio = _MonoResampler(a_stream.rate, self.sample_rate, lead)
                        for out in resampler.resample(frame):
                            # (channels, n) -> mono
                            yield [], self._audio.push(out.to_ndarray().mean(axis=0))
        except av.FFmpegError as err:
            raise MediaError(f"corrupt or truncated: decoding failed: {err}") from None
        duration = 0.0
        tail_frames: list[np.ndarray] = []
        tail_audio = None
        if v_stream is not None:
            tail_frames, duration = frames.finish()
        if a_stream is not None:
            audio = self._audio
            if audio is None or audio.length == 0:
                raise MediaError("audio stream holds no decodable sample")
            tail_audio = audio.finish()
            duration = max(duration, audio.length / a_stream.rate)
        if declared and duration < MIN_DECODED_SHARE * declared:
            raise MediaError(f"truncated: decoded {duration:.2f} s of the {declared:.2f} s declared")
        self.duration = duration
        yield tail_frames, tail_audio


def load_media(path: str | Path, *, fps: float, short_side: int, sample_rate: int,
               video: str = "required", audio: str = "required") -> Media:
    """Decode and normalise one whole raw file (`MediaDecoder`'s pieces put together); raises
    MediaError with the reason it is unusable. It holds the whole file at output size: ingest
    streams the pieces instead.

    `video` is "required", "optional" (decoded when present) or "none" (ignored); `audio` is
    "required" or "optional".
    """
    with MediaDecoder(path, fps=fps, short_side=short_side, sample_rate=sample_rate,
                      video=video, audio=audio) as decoder:
        images: list[np.ndarray] = []
        chunks: list[np.ndarray] = []
        for frames, samples in decoder.pieces():
            images += frames
            if samples is not None:
                chunks.append(samples)
        frames_out = np.stack(images) if decoder.has_video else None
        audio_out = np.concatenate(chunks).astype(np.float32) if decoder.has_audio else None
        return Media(frames_out, audio_out, fps, sample_rate, decoder.duration)


def load_image(path: str | Path, *, short_side: int) -> np.ndarray:
    """One still image -> (H, W, 3) uint8 RGB at short side `short_side` (aspect kept, sides
    multiples of 16, resized with the same area filter as video frames); raises MediaError with
    the reason it is unusable.

    Decoded by content, not by extension: real ImageNet holds `.JPEG` files that are PNG,
    greyscale or CMYK; all are valid images and are converted to RGB. A truncated or
    unidentifiable file is an error (Pillow's LOAD_TRUNCATED_IMAGES stays off)."""
    from PIL import Image

    path = Path(path)
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()  # decodes everything now: a truncated file fails here
            transparent = image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info)
            if transparent:
                # transparent pixels over white, as a viewer shows them (dropping alpha would
                # expose whatever colour the transparent pixels happen to hold)
                rgba = image.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = image.convert("RGB")  # L, CMYK, P, I;16, YCbCr, ... -> RGB
            pixels = np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # OSError covers "image file is truncated" and UnidentifiedImageError
        raise MediaError(f"unreadable image: {type(err).__name__}: {err}") from None
    return _resized(pixels, short_side)


def _resized(image: np.ndarray, short_side: int, reformatter=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB at short side `short_side`, as decoded frames are resized (the same
    pixels with a `VideoReformatter` kept for many frames: one swscale context, not one each)."""
    height, width = image.shape[:2]
    out_width, out_height = _output_size(width, height, short_side)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    if reformatter is not None:
        return reformatter.reformat(frame, width=out_width, height=out_height, format="rgb24",
                                    interpolation="AREA").to_ndarray()
    return frame.to_ndarray(width=out_width, height=out_height, format="rgb24",
                            interpolation="AREA")


def resample_frames(frames: np.ndarray, source_fps: float, *, fps: float,
                    short_side: int) -> np.ndarray:
    """A constant-rate video's frames (N, H, W, 3) uint8 at `source_fps` -> the frames
    `MediaDecoder` gives for it, without a codec: at `fps` by the same rule (`_ConstantRate`:
    the frame shown at t = k / fps is the last one starting at or before t) and at short side
    `short_side` with the same resize. What the benchmarks feed the model (benchmarks/
    synthetic_clips.py); tests/test_benchmark_synthetic_clips.py compares it with a decoded file."""
    from av.video.reformatter import VideoReformatter

    rate = _ConstantRate(fps)
    out: list[np.ndarray] = []
    for k, image in enumerate(frames):
        out += rate.push(k / source_fps, image)
    out += rate.finish()[0]
    reformatter = VideoReformatter()
    return np.stack([_resized(image, short_side, reformatter) for image in out])


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
    from av.video.reformatter import VideoReformatter

    # one converter for the clip: a frame's own to_ndarray(format=...) builds a new swscale
    # context per frame, which cost 5x the MJPEG decode itself (BENCHMARKS.md, issue 15)
    to_rgb = VideoReformatter()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if indices is None:
            return np.stack([to_rgb.reformat(f, format="rgb24").to_ndarray()
                             for f in container.decode(stream)])
        wanted = set(indices)
        intra = stream.codec_context.name == "mjpeg"
        out: Optional[np.ndarray] = None  # (len(indices), H, W, 3), filled in order
        filled = 0
        for number, packet in enumerate(container.demux(stream)):
            if packet.size == 0:
                continue
            if intra and number not in wanted:
                continue
            for frame in packet.decode():
                if number in wanted:
                    image = to_rgb.reformat(frame, format="rgb24").to_ndarray()
                    if out is None:
                        out = np.empty((len(indices), *image.shape), np.uint8)
                    out[filled] = image
                    filled += 1
            if number >= indices[-1]:
                break
        if filled != len(indices):
            raise ValueError(f"clip holds fewer frames than the {indices[-1] + 1} its record says")
        return out


def video_size(data: bytes) -> tuple[int, int]:
    """MP4 bytes -> (height, width) of its frames, from the container's header (no frame is
    decoded): what a split read without video needs to draw its training crops."""
    with av.open(io.BytesIO(data)) as container:
        context = container.streams.video[0].codec_context
        return int(context.height), int(context.width)


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

"""Peak memory of ingesting one long raw file, this checkout against an earlier one (issue 11).

    mkdir /tmp/vatt-before && git archive b5ab7ac vatt configs | tar -x -C /tmp/vatt-before
    .venv/bin/python benchmarks/ingest_memory.py --minutes 4 --before /tmp/vatt-before

Writes an N-minute HowTo100M-layout video (128x96 MPEG-4 at 10 fps with 16 kHz stereo PCM, in
AVI, written frame by frame so the writer itself stays small), then ingests it (one process,
`tiny` preset, stored at --short-side) once with each code base, each in a fresh process, and
reports how much its peak RSS grew over the RSS it had once its libraries were imported, next
to the bytes the whole file's frames take at output size. Both runs are on the same file, one
after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, FPS, RATE = 128, 96, 10, 16000

_MEASURE = """
import json, resource, sys
import av, psutil, torch, torchaudio
from vatt.config import load_config
from vatt.data.ingest import ingest
cfg = load_config("tiny", sys.argv[3:])
before = psutil.Process().memory_info().rss
[summary] = ingest(cfg, "howto100m", sys.argv[1], sys.argv[2], progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"growth": peak - before, "peak": peak, "clips": summary["clips"]}))
"""


def write_long_video(root: Path, minutes: float) -> Path:
    """videos/long.avi and caption.json under root; audio and video interleaved as written."""
    seconds = minutes * 60
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    with av.open(str(root / "videos" / "long.avi"), "w", format="avi") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = 800_000
        audio = out.add_stream("pcm_s16le", rate=RATE, layout="stereo")
        per_frame = RATE // FPS
        for k in range(int(seconds * FPS)):
            image = background.copy()
            image[:, (4 * k) % WIDTH:(4 * k) % WIDTH + 8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            for packet in video.encode(frame):
                out.mux(packet)
            t = (k * per_frame + np.arange(per_frame)) / RATE
            tone = 0.3 * np.sin(2 * np.pi * (220 + 20 * np.floor(t)) * t)
            pcm = np.round(np.stack([tone, tone]).T * 32767).astype(np.int16).reshape(1, -1)
            chunk = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
            chunk.sample_rate, chunk.pts = RATE, k * per_frame
            for packet in audio.encode(chunk):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)
    starts = np.arange(0.0, seconds - 2, 7.0)
    caption = {"long": {"start": starts.tolist(), "end": (starts + 2).tolist(),
                        "text": [f"step {k}" for k in range(len(starts))]}}
    (root / "caption.json").write_text(json.dumps(caption))
    return root


def measure(code: Path, src: Path, out: Path, short_side: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(src), str(out),
                          "data.ingest.num_workers=1", f"data.ingest.short_side={short_side}"],
                         capture_output=True, text=True, env=env, cwd=out.parent, check=False)
    if run.returncode != 0:
        raise SystemExit(f"ingest with the code in {code} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--short-side", type=int, default=384)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with "
                        "(the folder that holds its vatt/ and configs/)")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        src = write_long_video(Path(tmp) / "howto", args.minutes)
        fps = 5.0  # the tiny preset's
        width = args.short_side * WIDTH // HEIGHT
        frames = int(args.minutes * 60 * fps) * args.short_side * width * 3
        print(f"{args.minutes:g} min at {width}x{args.short_side}, {fps:g} fps: whole-file frames "
              f"{frames / 2**20:.0f} MiB")
        runs = [("after", here)] + ([("before", args.before)] if args.before else [])
        for name, code in runs:
            result = measure(code, src, Path(tmp) / f"out-{name}", args.short_side)
            print(f"{name:>6}: peak RSS {result['peak'] / 2**20:.0f} MiB, grew by "
                  f"{result['growth'] / 2**20:.0f} MiB during the ingest "
                  f"({result['clips']} clips)", flush=True)


if __name__ == "__main__":
    main()

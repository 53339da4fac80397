"""Decode + augment throughput of the data path against single-threaded ffmpeg doing the same
decode and resize (issues 3 and 15).

    flock /tmp/vatt-heavy.lock .venv/bin/python benchmarks/data_throughput.py \
        [--presets tiny mbs] [--videos 12] [--rounds 5] [--ray-cpus 1 2] [--json out.json]

For each preset it ingests a few generated HowTo100M-layout videos at that preset's geometry
(tiny: 8 x 64^2 at 5 fps, 8 kHz, stored 64 x 80; mbs: the spec's 32 x 224^2 at 10 fps, 48 kHz,
stored 224 x 304; clips are stored twice the window's length), then measures clips/s on one core
(torch threads 1, decoder threads 1), the methods alternating within each of --rounds rounds:

  pyav_window   `decode_video` of the middle window's T frames to RGB + `decode_wav`
  loader_eval   `decode_clip`, evaluation: the middle window's T frames decoded, the centre
                square of the short side resized to S x S, uint8 (float32 [-1, 1] before
                issue 15's uint8 rows); the audio and the captions
  loader_train  `decode_clip`, training: a random window's T frames decoded, Inception random
                resized crop to S x S, flip (p 0.5), colour jitter (p data.color_jitter_prob),
                uint8 rows (float32 [-1, 1] before issue 15's uint8 rows); audio with noise,
                sampled captions
  loader_train_float  loader_train + `video_to_float` per clip (what collate now does per
                batch): equal work with the former float32 rows
  ffmpeg_*      `ffmpeg -threads 1 -filter_threads 1`, one process over a concat list of the
                clips (per-process start-up spread over them) with each clip's `inpoint` /
                `outpoint` the middle window (only its T frames are decoded: MJPEG is
                intra-only), filters `crop=<box>,scale=S:S:flags=bilinear,format=rgb24`, raw
                RGB written to /dev/null (its size checked once through a pipe):
    ffmpeg_centre   box = the centre square of the short side: loader_eval's video work, less
                    the float normalisation, the audio and the captions
    ffmpeg_typical  box = training's typical crop (mean area of data.crop_area, aspect 1,
                    centred) scaled to S x S: loader_train's decode, crop and resize, less the
                    flip, the jitter, the float normalisation, the audio and the captions

and reports per-round ratios (median, min-max): loader_eval / ffmpeg_centre and
loader_train / ffmpeg_typical are the comparisons at equal work. It then reads the same data through
Ray Data (`build_dataset(..., training=True)`, the real path) with each of --ray-cpus CPUs and
reports clips/s (median of --ray-epochs epochs after a warm-up epoch). With --train-steps it also
runs a short `tiny` training loop and reports the share of step time spent waiting for data.
Timings are ratios within this run; absolute numbers depend on the machine and its load
(printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vatt.config import load_config
from vatt.data.ingest import ingest_index
from vatt.data.loader import _read_shard, clip_spec, decode_clip, load_vocab_words, read_manifest

try:  # rows carry uint8 video since issue 15's second step; float32 before
    from vatt.data.loader import video_to_float
except ImportError:
    video_to_float = None
from vatt.data.media import decode_video, decode_wav
from vatt.data.sources import read_howto100m
from vatt.data.synthetic import _howto_video


def _prepare(preset: str, videos: int, work: Path) -> tuple:
    raw = work / "raw" / "howto100m"
    (raw / "videos").mkdir(parents=True, exist_ok=True)
    cfg = load_config(preset, ["data.ingest.num_workers=2"])
    if not (raw / "caption.json").exists():
        captions = {}
        for i in range(videos):
            captions.update(_howto_video({"seed": 0, "index": i, "root": str(raw),
                                          "cue": cfg.data.ingest.synthetic_cue}))
        (raw / "caption.json").write_text(json.dumps(captions))
    out = work / f"data-{preset}"
    ingest_index(cfg, read_howto100m(raw, cfg.data.ingest), raw, out, "howto100m", progress=False)
    manifest = read_manifest(str(out), "howto100m")
    index = {c["clip_id"]: i for i, c in enumerate(manifest["clips"])}
    rows = [r for shard in manifest["splits"]["train"]["shards"]
            for r in _read_shard({"shard": shard}, str(out), "howto100m", index)]
    return cfg, out, manifest, rows


def _rate(fn, items: list) -> float:
    fn(items[0])  # warm-up (codec and allocator start-up)
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def _ffmpeg_command(rows: list[dict], work: Path, num_frames: int, fps: float, size: int,
                    crop: str) -> list[str] | None:
    """ffmpeg decoding each clip's middle window of `num_frames` frames, cropping it with the
    crop filter's `crop` arguments and scaling that to `size` x `size` RGB."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    clip_dir = work / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        path = clip_dir / f"{i:05d}.mp4"
        if not path.exists():
            path.write_bytes(row["mp4"])
        record = json.loads(row["record"])
        # the loader's middle window (clip_spec with one window): frames [start, start + T)
        start = max(0, int(record["num_frames"] * fps / float(record["fps"])) - num_frames) // 2
        lines.append(f"file '{path}'\ninpoint {start / fps:.6f}\n"
                     f"outpoint {(start + num_frames) / fps:.6f}\n")
    listing = clip_dir / f"list-{len(rows)}.txt"
    listing.write_text("".join(lines))
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-threads", "1",
            "-filter_threads", "1", "-f", "concat", "-safe", "0", "-i", str(listing),
            "-map", "0:v", "-vf",
            f"crop={crop},scale={size}:{size}:flags=bilinear,format=rgb24",
            "-f", "rawvideo", "-"]


def _check_ffmpeg(command: list[str], frame_bytes: int) -> None:
    """One untimed run (it also warms the page cache) that checks ffmpeg's output size: the
    windows really are T frames of S x S RGB."""
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE)
    if len(done.stdout) != frame_bytes:
        raise RuntimeError(f"ffmpeg wrote {len(done.stdout)} bytes, expected {frame_bytes}: "
                           "the concat in/out points no longer cut the loader's window")


def _ffmpeg_rate(command: list[str], clips: int) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return clips / (time.perf_counter() - start)


def _ray_rates(cfg, out: Path, cpus: int, epochs: int) -> dict:
    """clips/s of the training path through Ray Data (read, decode, augment, collate) with
    `cpus` CPUs."""
    import ray

    from vatt.data.loader import _collate, build_dataset

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        cfg.data.path = str(out)
        ds = build_dataset(cfg, "train", training=True, dataset="howto100m")
        rates = []
        for epoch in range(epochs + 1):  # the first epoch starts the workers
            start = time.perf_counter()
            # consumer-ready batches: `_collate` (uint8 rows -> float32 video) runs on the driver
            rows = sum(len(_collate(b)["clip_index"])
                       for b in ds.iter_batches(batch_size=4, batch_format="numpy"))
            if epoch:
                rates.append(rows / (time.perf_counter() - start))
    finally:
        ray.shutdown()
    return {"clips_per_s": round(float(np.median(rates)), 2),
            "range": [round(min(rates), 2), round(max(rates), 2)]}


def _spread(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 3),
            "range": [round(min(values), 3), round(max(values), 3)]}


def _data_wait_share(cfg, out: Path, steps: int, batch_size: int) -> dict:
    import ray

    from vatt.data.loader import build_dataset, torch_batches
    from vatt.losses import vatt_loss
    from vatt.model.vatt import build_model

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        cfg.data.path = str(out)
        model = build_model(cfg)
        optim = torch.optim.Adam(model.parameters(), lr=1e-4)
        ds = build_dataset(cfg, "train", training=True, dataset="howto100m")
        wait = compute = 0.0
        done = 0
        batches = None
        while done < steps:
            batches = iter(torch_batches(ds, batch_size, training=True))
            while done < steps:
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                outputs = model({k: batch[k] for k in ("video", "audio", "text", "text_mask")})
                loss = vatt_loss(outputs, batch["text_mask"], cfg.loss)["total"]
                optim.zero_grad()
                loss.backward()
                optim.step()
                t2 = time.perf_counter()
                if done > 0:  # the first batch includes the pipeline's start-up
                    wait += t1 - t0
                    compute += t2 - t1
                done += 1
        del batches  # stop the pipeline before Ray goes away
    finally:
        ray.shutdown()
    return {"steps": steps - 1, "batch_size": batch_size, "data_wait_s": round(wait, 3),
            "compute_s": round(compute, 3), "data_wait_share": round(wait / (wait + compute), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "mbs"])
    parser.add_argument("--videos", type=int, default=12, help="16-s generated videos per preset")
    parser.add_argument("--min-clips", type=int, default=48,
                        help="clips per round (the ingested clips repeated up to this many)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ray-cpus", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--ray-epochs", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    results: dict = {"load_average_before": os.getloadavg(), "cpu_count": os.cpu_count(),
                     "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for preset in args.presets:
            cfg, out, manifest, rows = _prepare(preset, args.videos, work)
            words = load_vocab_words(str(out))
            train = clip_spec(cfg, manifest, True, words)
            evaluation = clip_spec(cfg, manifest, False, words, num_windows=1)
            clips = rows * -(-args.min_clips // len(rows))  # whole copies of the ingested clips
            size, frames_per_clip = cfg.data.frame_size, cfg.data.num_frames
            stored_h, stored_w = decode_video(rows[0]["mp4"], [0]).shape[1:3]
            # training's typical crop: the mean Inception area (mean of data.crop_area) at the
            # aspect ratios' geometric mean (1 for [0.5, 2]), centred; ffmpeg crops one box for
            # all clips (a concat list shares one filter graph)
            aspect = math.sqrt(cfg.data.crop_aspect[0] * cfg.data.crop_aspect[1])
            area = np.mean(cfg.data.crop_area) * stored_h * stored_w
            typical = (min(stored_w, round(math.sqrt(area * aspect))),
                       min(stored_h, round(math.sqrt(area / aspect))))
            crops = {"ffmpeg_centre": "'min(iw,ih)':'min(iw,ih)'",
                     "ffmpeg_typical": f"{typical[0]}:{typical[1]}"}
            commands = {name: _ffmpeg_command(clips, work / preset, frames_per_clip,
                                              cfg.data.fps, size, crop)
                        for name, crop in crops.items()}
            command = commands["ffmpeg_centre"]

            def window(row):
                record = json.loads(row["record"])
                start = max(0, int(record["num_frames"]) - frames_per_clip) // 2
                return decode_video(row["mp4"], list(range(start, start + frames_per_clip)))

            methods = {
                "pyav_window": lambda r: (window(r), decode_wav(r["wav"])),
                "loader_eval": lambda r: decode_clip(r, evaluation),
                "loader_train": lambda r: decode_clip(r, train),
            }
            if video_to_float is not None:  # uint8 rows: the consumer's conversion added back
                methods["loader_train_float"] = lambda r: [
                    video_to_float(torch.from_numpy(row["video"])) for row in decode_clip(r, train)]
            if command:
                for each in commands.values():
                    _check_ffmpeg(each, len(clips) * frames_per_clip * size * size * 3)
            rates: dict[str, list[float]] = {name: [] for name in [*methods, *commands]}
            for _ in range(args.rounds):  # alternating: load drifts hit every method alike
                for name, fn in methods.items():
                    rates[name].append(_rate(fn, clips))
                for name, each in commands.items():
                    if each:
                        rates[name].append(_ffmpeg_rate(each, len(clips)))
            entry: dict = {"clips_per_round": len(clips), "stored": [stored_h, stored_w],
                           "ffmpeg_typical_crop": list(typical), "clips_per_s": {
                               name: _spread(values) for name, values in rates.items() if values}}
            if command:  # per-round ratios at equal work
                for name, against in (("pyav_window", "ffmpeg_centre"),
                                      ("loader_eval", "ffmpeg_centre"),
                                      ("loader_train", "ffmpeg_typical"),
                                      ("loader_train_float", "ffmpeg_typical"),
                                      ("loader_train", "ffmpeg_centre")):
                    if name not in rates:  # loader_train_float: only with uint8 rows
                        continue
                    entry[f"{name}_vs_{against}"] = _spread(
                        [a / b for a, b in zip(rates[name], rates[against])])
            entry["ray_data_train"] = {f"{cpus}_cpus": _ray_rates(cfg, out, cpus, args.ray_epochs)
                                       for cpus in args.ray_cpus}
            if preset == "tiny" and args.train_steps > 1:
                entry["training"] = _data_wait_share(cfg, out, args.train_steps, args.batch_size)
            results["presets"][preset] = entry
            print(f"{preset}: {json.dumps(entry)}", flush=True)
    results["load_average_after"] = os.getloadavg()
    print("load average before / after:", results["load_average_before"],
          results["load_average_after"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

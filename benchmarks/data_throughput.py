"""Decode + augment throughput of the data path, against single-threaded ffmpeg (issue 3).

    .venv/bin/python benchmarks/data_throughput.py [--presets tiny mbs] [--clips 24]
                                                   [--train-steps 30] [--json out.json]

For each preset it ingests a few generated HowTo100M-layout videos at that preset's geometry
(tiny: 8 x 64^2 at 5 fps, 8 kHz; mbs: the spec's 32 x 224^2 at 10 fps, 48 kHz), then measures in
one process, single-threaded (torch threads 1, decoder threads 1), in clips/s per CPU core:

  pyav_decode       PyAV: MP4 -> RGB frames + WAV -> float samples (what a loader must do)
  loader_eval       vatt.data.loader.decode_clip, evaluation (decode, window, centre crop)
  loader_train      vatt.data.loader.decode_clip, training (+ crop, flip, jitter, noise, text)
  ffmpeg_null       `ffmpeg -threads 1` decoding the same clips to RGB and discarding them,
                    one process over a concat list (no per-clip start-up): the practical limit
  torchcodec        measured when the package is installed, else reported as absent

and reports loader_train / ffmpeg_null. With --train-steps it also runs a short `tiny` training
loop (the real model and loss on the CPU, batches from Ray Data) and reports the share of step
time spent waiting for data. Timings are ratios within this run; absolute numbers depend on the
machine (and on other load: it is printed).
"""

from __future__ import annotations

import argparse
import json
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


def _rate(fn, items, repeat: int = 1) -> float:
    fn(items[0])  # warm-up (codec and allocator start-up)
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return repeat * len(items) / (time.perf_counter() - start)


def _ffmpeg_rate(rows: list[dict], work: Path) -> float | None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    clip_dir = work / "clips"
    clip_dir.mkdir(exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        path = clip_dir / f"{i:05d}.mp4"
        path.write_bytes(row["mp4"])
        lines.append(f"file '{path}'\n")
    listing = clip_dir / "list.txt"
    listing.write_text("".join(lines))
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-threads", "1", "-filter_threads", "1",
           "-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v",
           "-pix_fmt", "rgb24", "-f", "null", "-"]
    subprocess.run(cmd, check=True)  # warm the page cache
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return len(rows) / (time.perf_counter() - start)


def _torchcodec_rate(rows: list[dict]) -> float | None:
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        return None
    return _rate(lambda r: VideoDecoder(r["mp4"], num_ffmpeg_threads=1).get_frames_in_range(
        0, 10 ** 6), rows)


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
    parser.add_argument("--videos", type=int, default=6, help="16-s generated videos per preset")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    results: dict = {"load_average": os.getloadavg(), "cpu_count": os.cpu_count(), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for preset in args.presets:
            cfg, out, manifest, rows = _prepare(preset, args.videos, work)
            words = load_vocab_words(str(out))
            train = clip_spec(cfg, manifest, True, words)
            evaluation = clip_spec(cfg, manifest, False, words, num_windows=1)
            entry = {
                "clips": len(rows), "stored_frames": int(np.mean([len(decode_video(rows[0]["mp4"]))])),
                "pyav_decode": _rate(lambda r: (decode_video(r["mp4"]), decode_wav(r["wav"])), rows),
                "loader_eval": _rate(lambda r: decode_clip(r, evaluation), rows),
                "loader_train": _rate(lambda r: decode_clip(r, train), rows),
                "ffmpeg_null": _ffmpeg_rate(rows, work),
                "torchcodec": _torchcodec_rate(rows),
            }
            if entry["ffmpeg_null"]:
                entry["train_vs_ffmpeg"] = round(entry["loader_train"] / entry["ffmpeg_null"], 3)
                entry["decode_vs_ffmpeg"] = round(entry["pyav_decode"] / entry["ffmpeg_null"], 3)
            if preset == "tiny" and args.train_steps > 1:
                entry["training"] = _data_wait_share(cfg, out, args.train_steps, args.batch_size)
            results["presets"][preset] = entry
            print(f"{preset}: " + json.dumps(
                {k: (round(v, 2) if isinstance(v, float) else v) for k, v in entry.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

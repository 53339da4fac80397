"""How fast one VATT tower learns one attribute of the default dataset *with labels*.

    .venv/bin/python benchmarks/supervised_ceiling.py --tower video --target motion [KEY=VALUE ...]
    .venv/bin/python benchmarks/supervised_ceiling.py --tower audio --target sound model.audio.patch_size=128

A diagnostic for the learning-signal criteria (issue 5): a linear probe on features pretrained
*without* labels is not expected to beat the same backbone trained *with* them for the same number
of steps, so this bounds what `tiny` pretraining at its budget can show on a probe task. It
generates labelled 1-window clips with `vatt.data.synthetic` (the default dataset's scenes, rooms
and soundtracks, no codec), converts them as the evaluation loader does (centre crop of the short
side, resize to data.frame_size, RGB in [-1, 1]; audio resampled to data.sample_rate), trains the
preset's backbone plus a linear head with Adam at train.optim.lr_peak on train.global_batch_size
clips per step (DropToken as in pretraining), and prints held-out top-1 every --eval-every steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TARGETS = {"video": ("motion", "shape", "colour"), "audio": ("sound", "motion")}


def make_clips(cfg, count: int, tower: str, seed: int):
    """(inputs (N, ...) float32, labels {target: (N,) int64}) of `count` generated windows."""
    import numpy as np
    import torch
    import torchaudio
    from tqdm import tqdm

    from vatt.data import synthetic as S
    from vatt.data.loader import _spatial, clip_spec, video_to_float

    rng = np.random.default_rng(seed)
    data, seconds = cfg.data, cfg.data.num_frames / cfg.data.fps
    evaluation = clip_spec(cfg, {}, training=False, vocab_words=("<pad>", "<unk>"))
    inputs, labels = [], {"motion": [], "shape": [], "colour": [], "sound": []}
    for _ in tqdm(range(count), desc=f"generating {tower} clips", unit="clip"):
        scene = S.make_scene(rng, S.SCENE_SECONDS)
        start = rng.uniform(0, S.SCENE_SECONDS - seconds)
        if tower == "video":
            background = S.room(seed, rng)
            frames = np.stack([S.render(scene, background, start + k / data.fps, 1 / S.FPS, rng)[0]
                               for k in range(data.num_frames)])
            inputs.append(video_to_float(torch.from_numpy(_spatial(frames, None, evaluation))))
        else:
            wave = torch.from_numpy(S.soundtrack(scene, S.SCENE_SECONDS, rng))
            wave = torchaudio.functional.resample(wave, S.RATE, data.sample_rate)
            first = int(start * data.sample_rate)
            inputs.append(wave[first:first + data.audio_samples])
        labels["motion"].append(S.MOTIONS.index(scene.motion))
        labels["shape"].append(S.SHAPES.index(scene.actor.shape))
        labels["colour"].append(S.COLOUR_NAMES.index(scene.actor.colour))
        labels["sound"].append(S.SOUNDS.index(scene.sound))
    return torch.stack(inputs).contiguous(), {k: torch.tensor(v) for k, v in labels.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", choices=sorted(TARGETS), default="video")
    parser.add_argument("--target", default="motion",
                        help="video: motion, shape, colour; audio: sound (kind), motion")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--clips", type=int, default=1600, help="training clips (default 1600, "
                        "the default dataset's pretraining clips)")
    parser.add_argument("--test-clips", type=int, default=400)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the curve as JSON here")
    parser.add_argument("overrides", nargs="*", help="config overrides, KEY=VALUE")
    args = parser.parse_args(argv)
    if args.target not in TARGETS[args.tower]:
        parser.error(f"--target {args.target} is not an attribute the {args.tower} tower can "
                     f"see; pick one of {', '.join(TARGETS[args.tower])}")

    import torch
    import torch.nn.functional as F

    from vatt.config import load_config
    from vatt.model import build_model

    cfg = load_config(args.preset, args.overrides)
    inputs, labels = make_clips(cfg, args.clips + args.test_clips, args.tower, args.seed)
    targets = labels[args.target]
    x_train, y_train = inputs[:args.clips], targets[:args.clips]
    x_test, y_test = inputs[args.clips:], targets[args.clips:]
    torch.manual_seed(cfg.train.seed)
    backbone = build_model(cfg).backbones[args.tower]
    with torch.no_grad():
        width = backbone.eval()(x_train[:1]).shape[-1]
    head = torch.nn.Linear(width, int(targets.max()) + 1)
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()],
                                 lr=cfg.train.optim.lr_peak)
    generator = torch.Generator().manual_seed(args.seed)
    batch = cfg.train.global_batch_size

    def accuracy() -> float:
        backbone.eval()
        with torch.no_grad():
            predicted = torch.cat([head(backbone(x_test[i:i + 100])).argmax(1)
                                   for i in range(0, len(x_test), 100)])
        return float((predicted == y_test).float().mean())

    curve, started = [], time.time()
    for step in range(1, args.steps + 1):
        pick = torch.randint(0, args.clips, (batch,), generator=generator)
        backbone.train()
        loss = F.cross_entropy(head(backbone(x_train[pick])), y_train[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            value = float(loss.detach())
            curve.append({"step": step, "train_loss": value, "test_top1": accuracy()})
            print(f"step {step}: train loss {value:.3f}, held-out top-1 "
                  f"{curve[-1]['test_top1']:.3f} ({time.time() - started:.0f} s)", flush=True)
    chance = 1 / (int(targets.max()) + 1)
    print(f"{args.tower} tower, target {args.target}: held-out top-1 {curve[-1]['test_top1']:.3f} "
          f"after {args.steps} supervised steps (chance {chance:.3f}; 3x chance {3 * chance:.3f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"tower": args.tower, "target": args.target,
                                              "overrides": args.overrides, "chance": chance,
                                              "curve": curve}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

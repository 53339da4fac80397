"""How fast one VATT tower learns one attribute of the default dataset *with labels*.

    .venv/bin/python benchmarks/supervised_ceiling.py --tower video --target motion [KEY=VALUE ...]
    .venv/bin/python benchmarks/supervised_ceiling.py --tower audio --target sound model.audio.patch_size=128

A diagnostic for the learning-signal criteria (issue 5): a linear probe on features pretrained
*without* labels is not expected to beat the same backbone trained *with* them for the same number
of steps, so this bounds what `tiny` pretraining at its budget can show on a probe task. Its
clips are the default dataset's labelled videos (the UCF101-style layout's 4 s videos of one
motion each, `--cue` as data.ingest.synthetic_cue, dataset seed --seed), built by
synthetic_clips.py as the pipeline builds them: each video rendered once at the generator's
frame rate, its frames taken at data.fps and resized as ingestion does, its audio resampled to
data.sample_rate, and the evaluation's data.eval_num_windows windows of each (centre crop of
the short side, RGB in [-1, 1]). No codec (the generated files' and the stored clips' encoding
is skipped: the frames differ from the pipeline's by codec error only,
tests/test_benchmark_synthetic_clips.py). Training and held-out windows come from different
videos. It trains the preset's backbone plus a linear head with Adam at train.optim.lr_peak on
train.global_batch_size windows per step (DropToken as in pretraining), and prints held-out
top-1 every --eval-every steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

TARGETS = {"video": ("motion", "shape", "colour"), "audio": ("sound", "motion")}


def make_clips(cfg, videos: range, tower: str, seed: int, cue: str):
    """(inputs (N, ...) float32, labels {target: (N,) int64}) of the evaluation's windows of
    labelled videos `videos` of the dataset of `seed` (video i shows motion i % 8)."""
    import torch
    from tqdm import tqdm

    from synthetic_clips import evaluation_windows, labelled_clips  # benchmarks/, sys.path[0]
    from vatt.data import synthetic as S
    from vatt.data.loader import clip_spec, video_to_float

    evaluation = clip_spec(cfg, {}, training=False, vocab_words=("<pad>", "<unk>"))
    inputs, labels = [], {"motion": [], "shape": [], "colour": [], "sound": []}
    for index in tqdm(videos, desc=f"generating {tower} clips", unit="video"):
        [clip] = labelled_clips(cfg, seed, [index], cue)
        scene = clip.scene
        for video, audio in evaluation_windows(clip, evaluation):
            inputs.append(video_to_float(torch.from_numpy(video)) if tower == "video"
                          else torch.from_numpy(audio))
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
    parser.add_argument("--clips", type=int, default=1600, help="training windows (default "
                        "1600, as many as the default dataset's pretraining clips), "
                        "data.eval_num_windows per labelled video")
    parser.add_argument("--test-clips", type=int, default=400,
                        help="held-out windows, of other videos")
    parser.add_argument("--cue", choices=("colour", "motion"), default="motion",
                        help="the dataset's cue (data.ingest.synthetic_cue)")
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
    from vatt.data import synthetic as S
    from vatt.model import build_model

    cfg = load_config(args.preset, args.overrides)
    per_video = cfg.data.eval_num_windows
    train_videos = math.ceil(args.clips / per_video)
    test_videos = range(train_videos, train_videos + math.ceil(args.test_clips / per_video))
    x_train, y_train = make_clips(cfg, range(train_videos), args.tower, args.seed, args.cue)
    x_test, y_test = make_clips(cfg, test_videos, args.tower, args.seed, args.cue)
    x_train, y_train = x_train[:args.clips], y_train[args.target][:args.clips]
    x_test, y_test = x_test[:args.test_clips], y_test[args.target][:args.test_clips]
    torch.manual_seed(cfg.train.seed)
    backbone = build_model(cfg).backbones[args.tower]
    with torch.no_grad():
        width = backbone.eval()(x_train[:1]).shape[-1]
    num_classes = len({"motion": S.MOTIONS, "shape": S.SHAPES, "colour": S.COLOUR_NAMES,
                       "sound": S.SOUNDS}[args.target])
    head = torch.nn.Linear(width, num_classes)
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
    chance = 1 / num_classes
    print(f"{args.tower} tower, target {args.target}: held-out top-1 {curve[-1]['test_top1']:.3f} "
          f"after {args.steps} supervised steps (chance {chance:.3f}; 3x chance {3 * chance:.3f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"tower": args.tower, "target": args.target,
                                              "cue": args.cue, "overrides": args.overrides,
                                              "chance": chance, "curve": curve}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

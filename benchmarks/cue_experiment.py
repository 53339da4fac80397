"""Does `tiny` pretraining learn the motions when the data asks for them? In-process, no codec.

    .venv/bin/python benchmarks/cue_experiment.py --cue motion --steps 300 [--eval-at 150] [KEY=VALUE ...]

Builds the default dataset's clips as the pipeline gives them to the model (synthetic_clips.py;
dataset seed --seed, `--cue`: `colour` or `motion`, where sound and captions follow the motion
only): the first --clips pretraining clips (the HowTo100M-style videos' 3.2 s clips, four per
video, each scene rendered once at the generator's frame rate, frames taken at data.fps and
resized as ingestion does, audio resampled as it does, the data.num_text_candidates nearest
narrations as captions), a training window of data.num_frames of one drawn per step as the
loader draws it (window, crop, flip, jitter, audio noise). No codec: the generated files' and
the stored clips' encoding is skipped, so the frames differ from the pipeline's by codec error
only (tests/test_benchmark_synthetic_clips.py). It trains the preset's VATT with its losses,
optimiser and learning-rate schedule on random batches of them, and prints the action linear
probe (8 motions, 15 train / 10 test labelled videos per class, the UCF101-style layout's, with
the evaluation's data.eval_num_windows windows each) and the audio probe (8 sound kinds) of the
random init and of the trained model (vatt.evaluate.probes). A diagnostic for issues 14 and 26
(BENCHMARKS.md, "Learning signal"); benchmarks/learning_signal.py measures the real pipeline.
"""

from __future__ import annotations

import argparse
import math
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cue", choices=("colour", "motion"), default="motion")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--clips", type=int, default=1600,
                        help="pretraining clips (1600: the default dataset's)")
    parser.add_argument("--eval-at", default="", help="also evaluate at these steps, e.g. 150,300")
    parser.add_argument("--seed", type=int, default=0,
                        help="the dataset's seed (data.ingest.synthetic_seed) and the batches'")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("overrides", nargs="*", help="config overrides, KEY=VALUE")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from synthetic_clips import (evaluation_windows, labelled_clips,  # benchmarks/, sys.path[0]
                                 pretraining_clips, training_window)
    from vatt.config import load_config
    from vatt.data import synthetic as S
    from vatt.data.loader import clip_spec, video_to_float
    from vatt.evaluate import probes
    from vatt.losses import vatt_loss
    from vatt.model import build_model
    from vatt.text import Vocabulary
    from vatt.seeding import seed_everything
    from vatt.train.schedule import build_optimizer, set_learning_rate

    cfg = load_config(args.preset, [f"train.optim.total_steps={args.steps}", *args.overrides])
    data = cfg.data
    words = ("<pad>", "<unk>")

    started = time.time()
    per_video = 4  # a 12.8 s pretraining video gives four 3.2 s clips
    clips = pretraining_clips(cfg, args.seed, range(math.ceil(args.clips / per_video)),
                              args.cue)[:args.clips]
    vocab = Vocabulary.build([c for clip in clips for c in clip.captions],
                             max_size=data.vocab_size - 2)
    evaluation = clip_spec(cfg, {}, training=False, vocab_words=words)

    def probe_set(videos: range):
        """The evaluation's windows of labelled videos: inputs, motion, sound kind, video."""
        video, audio, motion, kind, ids = [], [], [], [], []
        for number, clip in enumerate(labelled_clips(cfg, args.seed, videos, args.cue)):
            for frames, wave in evaluation_windows(clip, evaluation):
                video.append(torch.from_numpy(frames))
                audio.append(torch.from_numpy(wave))
                motion.append(clip.label)
                kind.append(S.SOUNDS.index(clip.scene.sound))
                ids.append(number)
        return {"video": video_to_float(torch.stack(video)), "audio": torch.stack(audio),
                "motion": np.array(motion), "kind": np.array(kind), "ids": np.array(ids)}

    classes = len(S.MOTIONS)  # labelled video i shows motion i % 8
    train_set, test_set = probe_set(range(15 * classes)), probe_set(range(15 * classes,
                                                                          25 * classes))
    print(f"generated in {time.time() - started:.0f} s", flush=True)

    def features(model, x, tower):
        model.eval()
        with torch.no_grad():
            return torch.cat([model.backbones[tower](x[i:i + 64])
                              for i in range(0, len(x), 64)]).numpy()

    def evaluate(model, tag: str) -> None:
        found = {}
        for tower, target in (("video", "motion"), ("audio", "kind")):
            result = probes.linear_probe(
                features(model, train_set[tower], tower), train_set[target], train_set["ids"],
                features(model, test_set[tower], tower), test_set[target], test_set["ids"], 8,
                settings=cfg.eval.probe, seed=cfg.eval.seed, task=tower)
            found[tower] = result.metrics["top1"]
        print(f"[{tag}] action probe top-1 {found['video']:.3f}, audio probe (sound kind) "
              f"top-1 {found['audio']:.3f} (chance 0.125)", flush=True)

    seed_everything(cfg.train.seed)
    model = build_model(cfg, vocab)
    evaluate(model, "random init")
    optimizer = build_optimizer(model.parameters(), cfg.train.optim)
    training = clip_spec(cfg, {}, training=True, vocab_words=words)
    r = np.random.default_rng(args.seed + 5)
    eval_at = {int(x) for x in args.eval_at.split(",") if x}
    started = time.time()
    for step in range(args.steps):
        model.train()
        set_learning_rate(optimizer, step, cfg.train.optim)
        pick = r.choice(len(clips), cfg.train.global_batch_size, replace=False)
        windows = [training_window(clips[i], training, r) for i in pick]
        # the clip's captions, padded and masked to data.num_text_candidates as the loader does
        text = torch.zeros(len(pick), data.num_text_candidates, data.max_text_tokens,
                           dtype=torch.int64)
        mask = torch.zeros(text.shape[:2])
        for row, i in enumerate(pick):
            for j, caption in enumerate(clips[i].captions[:data.num_text_candidates]):
                text[row, j] = torch.tensor(vocab.encode(caption, data.max_text_tokens))
                mask[row, j] = 1.0
        batch = {"video": video_to_float(torch.stack([torch.from_numpy(v) for v, _ in windows])),
                 "audio": torch.stack([torch.from_numpy(a) for _, a in windows]),
                 "text": text, "text_mask": mask}
        losses = vatt_loss(model(batch), batch["text_mask"], cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            va, vt = float(losses["video_audio"].detach()), float(losses["video_text"].detach())
            print(f"step {step + 1}: video-audio {va:.3f}, video-text {vt:.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)
        if step + 1 in eval_at and step + 1 != args.steps:
            evaluate(model, f"step {step + 1}")
    evaluate(model, f"trained {args.steps} steps, cue {args.cue}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does `tiny` pretraining learn the motions when the data asks for them? In-process, no codec.

    .venv/bin/python benchmarks/cue_experiment.py --cue motion --steps 300 [--eval-at 150] [KEY=VALUE ...]

Generates --clips pretraining windows of the default dataset's scenes (vatt.data.synthetic with
`--cue`: `colour`, the default data, or `motion`, where sound and captions follow the motion
only), converted as the loader does (training crops and flips; audio resampled), trains the
preset's VATT with its losses, optimiser and learning-rate schedule on random batches of them,
and prints the action linear probe (8 motions, 15 train / 10 test videos per class, 4 windows
each) and the audio probe (8 sound kinds) of the random init and of the trained model
(vatt.evaluate.probes). A diagnostic for issue 14 (BENCHMARKS.md, "Learning signal");
benchmarks/learning_signal.py measures the real pipeline.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cue", choices=("colour", "motion"), default="motion")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--clips", type=int, default=1600, help="pretraining windows")
    parser.add_argument("--eval-at", default="", help="also evaluate at these steps, e.g. 150,300")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("overrides", nargs="*", help="config overrides, KEY=VALUE")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import torchaudio

    from vatt.config import load_config
    from vatt.data import synthetic as S
    from vatt.data.loader import _spatial, clip_spec, video_to_float
    from vatt.evaluate import probes
    from vatt.losses import vatt_loss
    from vatt.model import build_model
    from vatt.text import Vocabulary
    from vatt.train.checkpoint import seed_everything
    from vatt.train.schedule import build_optimizer, set_learning_rate

    cfg = load_config(args.preset, [f"train.optim.total_steps={args.steps}", *args.overrides])
    data = cfg.data
    seconds = data.num_frames / data.fps
    words = ("<pad>", "<unk>")

    def frames(scene, background, start, rng):
        return np.stack([S.render(scene, background, start + k / data.fps, 1 / S.FPS, rng)[0]
                         for k in range(data.num_frames)])

    def sound(scene, duration, rng):
        wave = torch.from_numpy(S.soundtrack(scene, duration, rng))
        return torchaudio.functional.resample(wave, S.RATE, data.sample_rate)

    started = time.time()
    rng = np.random.default_rng(args.seed)
    clips = []  # (frames, audio window, captions)
    for _ in range(args.clips):
        scene = S.make_scene(rng, S.SCENE_SECONDS, cue=args.cue)
        start = rng.uniform(0, S.SCENE_SECONDS - seconds)
        video = frames(scene, S.room(args.seed, rng), start, rng)
        first = int(start * data.sample_rate)
        audio = sound(scene, S.SCENE_SECONDS, rng)[first:first + data.audio_samples]
        clips.append((video, audio, [S.describe(scene, rng)
                                     for _ in range(data.num_text_candidates)]))
    vocab = Vocabulary.build([c for clip in clips for c in clip[2]],
                             max_size=data.vocab_size - 2)
    evaluation = clip_spec(cfg, {}, training=False, vocab_words=words)

    def probe_set(per_class: int, seed: int):
        """Videos of each motion (4 s, 4 evenly spread windows): inputs, motion, sound kind."""
        r = np.random.default_rng([seed, 99])
        video, audio, motion, kind, ids = [], [], [], [], []
        for c, name in enumerate(S.MOTIONS):
            for j in range(per_class):
                scene = S.make_scene(r, 4.0, motion=name, cue=args.cue)
                background, wave = S.room(seed, r), sound(scene, 4.0, r)
                for w in range(4):
                    start = w * (4.0 - seconds) / 3
                    video.append(torch.from_numpy(_spatial(frames(scene, background, start, r),
                                                           None, evaluation)))
                    first = int(start * data.sample_rate)
                    audio.append(wave[first:first + data.audio_samples])
                    motion.append(c)
                    kind.append(S.SOUNDS.index(scene.sound))
                    ids.append(c * per_class + j)
        return {"video": video_to_float(torch.stack(video)), "audio": torch.stack(audio),
                "motion": np.array(motion), "kind": np.array(kind), "ids": np.array(ids)}

    train_set, test_set = probe_set(15, args.seed + 1000), probe_set(10, args.seed + 2000)
    print(f"generated in {time.time() - started:.0f} s", flush=True)
    settings = probes.ProbeSettings.from_config(cfg.eval)

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
                settings=settings, task=tower)
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
        text = torch.tensor([[vocab.encode(c, data.max_text_tokens) for c in clips[i][2]]
                             for i in pick])
        batch = {"video": video_to_float(torch.stack([torch.from_numpy(
                     _spatial(clips[i][0], r, training)) for i in pick])),
                 "audio": torch.stack([clips[i][1] for i in pick]),
                 "text": text, "text_mask": torch.ones(text.shape[:2])}
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

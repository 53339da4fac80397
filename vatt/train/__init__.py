"""VATT pretraining with Ray Train (issue 4).

- `vatt.train.pretrain.pretrain(cfg)`: preflight, Ray Data dataset, TorchTrainer, run folder.
- `vatt.train.loop.train_loop_per_worker`: the per-worker loop (no global state).
- `vatt.train.schedule`: Adam and the warmup + quarter-cosine learning rate.
- `vatt.train.resume`: writing a checkpoint and resuming from it (the format itself, its
  file names and reading it back for evaluation: `vatt.checkpoints`).
- `vatt.train.preflight`: checks that fail a run before it starts.

The command is `vatt pretrain` (vatt.cli), also what a KubeRay RayJob runs.
"""

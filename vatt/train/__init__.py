"""VATT pretraining with Ray Train (issue 4).

- `vatt.train.pretrain.pretrain(cfg)`: preflight, Ray Data dataset, TorchTrainer, run folder.
- `vatt.train.loop.train_loop_per_worker`: the per-worker loop (no global state).
- `vatt.train.schedule`: Adam and the warmup + quarter-cosine learning rate.
- `vatt.train.checkpoint`: what a checkpoint holds; save / load.
- `vatt.train.preflight`: checks that fail a run before it starts.

Entry for a KubeRay RayJob: `python -m vatt.train --preset tiny [KEY=VALUE ...]`.
"""

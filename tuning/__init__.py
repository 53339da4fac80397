"""Ray Tune sweeps over the VATT config (`vatt sweep`, the Prefect `sweep` flow).

`space.py` reads search spaces (YAML files beside it, e.g. `droptoken_sharing.yaml`); `sweep.py`
runs one: a Tuner whose trials each run `vatt.train.pretrain.pretrain` (Ray Train) and report
the held-out validation score; `results.py` writes the table, the trade-off plot and the best
config. The library (`vatt/`) knows nothing of this package.
"""

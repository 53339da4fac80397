"""The learning signal of issue 5 on a shortened default pipeline, all real parts: the generated
default dataset ingested (half size), `tiny` pretraining under Ray Train on a local Ray (fewer
steps), the checkpoint evaluated through the loader (vatt.evaluate.data) the same way as a
randomly initialised model of the same config, both against chance. The full-budget numbers come
from benchmarks/learning_signal.py (BENCHMARKS.md); that two evaluations of one checkpoint give
the same numbers is tested in test_evaluate_data.py and test_evaluate_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from vatt.config import load_config

# shortened: half the default dataset, 120 steps of 16 clips instead of the preset's 300 x 32
SCALE = 0.5
SHORT = ["train.optim.total_steps=120", "train.optim.warmup_steps=10",
         "train.global_batch_size=16", "train.checkpoint_every=120", "train.log_every=20"]
# half the retrieval test videos (30): R@5 has the chance R@10 has on the full split (1/6)
RETRIEVAL_METRIC = "R@5"

pytestmark = [
    pytest.mark.slow,
    # Known failure, measured (BENCHMARKS.md, "Learning signal"): after the tiny preset's budget
    # no held-out metric beats chance and the random model clearly, although the training
    # video-text loss falls below its chance value. strict: the day pretraining learns, this
    # XPASS fails and the marker must go (issue 5 stays open until then).
    pytest.mark.xfail(strict=True, reason="tiny pretraining shows no held-out learning signal "
                                          "yet (BENCHMARKS.md, Learning signal)"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoint folder of a shortened tiny pretraining on the default dataset."""
    import ray

    from vatt.data.ingest import ingest
    from vatt.train.pretrain import pretrain

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    root = tmp_path_factory.mktemp("signal")
    data = root / "data"
    cfg = load_config("tiny", [f"data.ingest.synthetic_scale={SCALE}", f"data.path={data}",
                               f"train.storage_path={root / 'runs'}", "train.run_name=short",
                               *SHORT])
    ingest(cfg, "synthetic", None, data, progress=False)
    result = pretrain(cfg)
    assert result.history[-1]["loss_total"] < result.history[0]["loss_total"]
    yield Path(result.checkpoint_uri)
    if started:
        ray.shutdown()


def test_trained_beats_random_and_chance(trained):
    from vatt.evaluate.data import build_eval_data
    from vatt.evaluate.pipeline import load_checkpoint_for_eval
    from vatt.evaluate.signal import compare_with_random, signal_failures, signal_table

    loaded = load_checkpoint_for_eval(trained)
    data = build_eval_data(loaded.config)
    rows = compare_with_random(loaded.model, loaded.config, data)
    print("\n" + signal_table(rows))
    assert rows[f"text_video_retrieval.{RETRIEVAL_METRIC}"]["chance"] <= 1 / 6
    assert signal_failures(rows, RETRIEVAL_METRIC) == []

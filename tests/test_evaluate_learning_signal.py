"""The learning signal of issue 5 on the default pipeline at its default budget, all real parts:
the session's `vatt pipeline` run (the generated default dataset ingested, `tiny` pretraining
with the preset's budget under Ray Train on a local Ray, evaluation): the trained model's numbers
are the pipeline's own report (results.json); a randomly initialised model of the same config is
evaluated here through the loader (vatt.evaluate.data) the same way; both against chance. That an
evaluation of the same checkpoint again gives the report's numbers exactly is tested in
test_readme_commands.py (`vatt evaluate --checkpoint latest`). The numbers of the same run made by
hand are in BENCHMARKS.md (benchmarks/learning_signal.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vatt.config import load_config
from vatt.storage import ObjectStore

@pytest.fixture(scope="module")
def rows(default_pipeline):
    """{metric: {trained, random, chance}} after the default pipeline (`vatt pipeline`: ingest,
    pretrain at the preset's budget, evaluate), its report against its random init."""
    from vatt.checkpoints import read_config
    from vatt.evaluate.data import plan
    from vatt.evaluate.signal import evaluate_random, signal_rows, signal_table

    history = json.loads((default_pipeline.checkpoint.parent / "history.json").read_text())
    assert history[-1]["loss_total"] < history[0]["loss_total"]
    assert history[-1]["step"] == load_config("tiny").train.optim.total_steps
    report = json.loads((default_pipeline.report / "results.json").read_text())
    assert Path(report["checkpoint"]).resolve() == default_pipeline.checkpoint.resolve()
    cfg = read_config(default_pipeline.checkpoint, ObjectStore())
    found = signal_rows(report["metrics"], evaluate_random(cfg, plan(cfg)[0]))
    print("\n" + signal_table(found))
    return found


def _failures(rows, task: str) -> list[str]:
    from vatt.evaluate.signal import signal_failures

    return [f for f in signal_failures(rows) if f.startswith(f"{task}.")]


def test_zero_shot_retrieval_beats_chance_and_the_random_model(rows):
    # text->video R@10 >= 3x chance (10 of 60 videos) and >= 2x the random model's
    assert rows["text_video_retrieval.R@10"]["chance"] == pytest.approx(1 / 6)
    assert _failures(rows, "text_video_retrieval") == []


def test_audio_probe_beats_chance_and_the_random_model(rows):
    # ESC-50-style top-1 (8 sound kinds, 5 folds) >= 3x chance and >= 1.5x the random model's
    assert rows["audio_linear.top1"]["chance"] == pytest.approx(1 / 8)
    assert _failures(rows, "audio_linear") == []


# Known failure, measured (BENCHMARKS.md, "Learning signal"): at the tiny budget the frozen
# video features do not separate the motions 3x better than chance (1.5x), nor 1.5x better than
# the random model's (1.15x). Even with labels the same
# backbone does not start to fit the motions of generator version 5 in 300 steps (3x chance at
# ~800); the cue `motion` (pairs matched by the motion only) learned nothing at all in 300 steps
# nor in 1200 (issue 26). strict: the day the probe passes, this XPASS fails and the marker must
# go.
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="action linear probe below 3x chance and 1.5x the random model's "
                          "after tiny pretraining (BENCHMARKS.md, Learning signal; issues 14, 26)")
def test_action_probe_beats_chance_and_the_random_model(rows):
    assert _failures(rows, "action_linear") == []


def test_the_criteria_on_known_numbers():
    """signal_rows / signal_failures / signal_table on numbers worked out by hand."""
    from vatt.evaluate.signal import signal_failures, signal_rows, signal_table

    trained = {"text_video_retrieval.R@10": 0.9, "text_video_retrieval.num_items": 60,
               "audio_linear.top1": 0.5, "audio_linear.chance_top1": 0.125,
               "action_linear.top1": 0.2, "action_linear.chance_top1": 0.125}
    random = {"text_video_retrieval.R@10": 0.2, "audio_linear.top1": 0.45,
              "action_linear.top1": 0.1}
    rows = signal_rows(trained, random)
    assert rows["text_video_retrieval.R@10"] == {"trained": 0.9, "random": 0.2, "chance": 10 / 60}
    assert signal_failures(rows) == [
        "action_linear.top1: trained 0.200 < 3 x chance 0.125",  # 0.2 < 0.375
        "audio_linear.top1: trained 0.500 < 1.5 x random 0.450"]  # 0.5 < 0.675
    assert "| audio_linear.top1 | 0.5000 | 0.4500 | 0.1250 | 4.00 | 1.11 |" in signal_table(rows)


def test_the_probe_margin_is_the_criterions_1_5x_the_random_model():
    """1.5x the random model's top-1 passes, just under it fails (1.25x used to pass)."""
    from vatt.evaluate.signal import RANDOM_MARGIN, signal_failures, signal_rows

    assert RANDOM_MARGIN == 1.5
    trained = {"text_video_retrieval.R@10": 0.9, "text_video_retrieval.num_items": 60,
               "audio_linear.chance_top1": 0.125, "action_linear.chance_top1": 0.125,
               "action_linear.top1": 0.75, "audio_linear.top1": 0.75}
    random = {"text_video_retrieval.R@10": 0.2, "action_linear.top1": 0.5,  # 0.75 = 1.5 x 0.5
              "audio_linear.top1": 0.52}  # 0.75 = 1.44 x 0.52
    assert signal_failures(signal_rows(trained, random)) == [
        "audio_linear.top1: trained 0.750 < 1.5 x random 0.520"]


def test_a_missing_metric_fails_and_names_it():
    """No criterion passes by not being measured: a task left out, a metric the random model
    lacks, a missing chance level each fail with the metric's name."""
    from vatt.evaluate.signal import signal_failures, signal_rows, signal_table

    trained = {"text_video_retrieval.R@10": 0.9, "text_video_retrieval.num_items": 60,
               "audio_linear.top1": 0.6}  # no action probe; no audio chance level
    random = {"text_video_retrieval.R@10": 0.2}  # the random model lacks the audio probe
    rows = signal_rows(trained, random)
    assert signal_failures(rows) == [
        "action_linear.top1: not measured for the trained model (is action_linear in "
        "eval.tasks, with its dataset ingested?)",
        "audio_linear.top1: not measured for the random model; evaluate it on the same tasks "
        "(evaluate_random)"]
    assert "| audio_linear.top1 | 0.6000 | - |" in signal_table(rows)
    random["audio_linear.top1"] = 0.1
    assert signal_failures(signal_rows(trained, random))[1] == (
        "audio_linear.top1: its chance level is unknown (audio_linear.chance_top1 is missing "
        "from the trained model's metrics)")
    del trained["text_video_retrieval.num_items"]
    assert signal_failures(signal_rows(trained, random))[0] == (
        "text_video_retrieval.R@10: its chance level is unknown (text_video_retrieval.num_items "
        "is missing from the trained model's metrics)")
    assert len(signal_failures({})) == 3  # nothing measured: every criterion fails

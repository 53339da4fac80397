"""Checkpoint written by vatt.train -> evaluate -> report -> registry, on the real tiny model."""

import json
from pathlib import Path

import pytest
import torch

from vatt.checkpoints import CheckpointError, read_config, resolve_checkpoint
from vatt.config import load_config, replace
from vatt.evaluate.pipeline import evaluate_checkpoint, load_checkpoint_for_eval
from vatt.evaluate.registry import Registry, RegistryError
from vatt.storage import ObjectStore
from vatt.model import build_model
from vatt.train.resume import TrainState, save_checkpoint
from test_evaluate_runner import OVERRIDES, _batches, jobs_of


def _load(folder, store=None, overrides=()):
    """The checkpoint loaded for evaluation: its own config with its evaluation settings plus
    `overrides` (as `vatt evaluate` gives them)."""
    store = store or ObjectStore()
    settings = replace(read_config(folder, store), list(overrides)) if overrides else None
    return load_checkpoint_for_eval(str(folder), store, settings)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = load_config("tiny", OVERRIDES + [f"eval.output_path={root}/eval",
                                           f"eval.registry_path={root}/registry",
                                           "eval.promotion.metric=action_linear.top1"])
    torch.manual_seed(0)
    model = build_model(cfg)
    folder = root / "runs" / "exp1" / "checkpoint_00000007"
    save_checkpoint(folder, rank=0, state=TrainState(step=7), model=model,
                    optimizer=torch.optim.Adam(model.parameters()), cfg=cfg,
                    data_version={"md5": "d41d8cd9"})
    return root, folder


def test_evaluate_checkpoint_twice_same_numbers_and_registry(checkpoint):
    root, folder = checkpoint
    data = {"train": _batches(1, 9), "test": _batches(2, 6)}
    jobs = jobs_of(data, "action_linear", "text_video_retrieval")
    assert resolve_checkpoint("latest", str(root / "runs"), ObjectStore()) == str(folder)
    first = evaluate_checkpoint(_load(folder), jobs, store=ObjectStore())
    second = evaluate_checkpoint(_load(folder), jobs, store=ObjectStore())
    assert first.results["metrics"] == second.results["metrics"]
    assert first.report_uri != second.report_uri  # each evaluation keeps its own report
    for outcome in (first, second):
        assert (Path(outcome.report_uri) / "results.json").is_file()
    # the same model again is no improvement beyond the tiny preset's eval.promotion.margin
    assert first.decision.promoted and not second.decision.promoted
    assert "eval.promotion.margin" in second.decision.reason
    assert second.decision.promoted_value == first.decision.candidate_value
    report = json.loads((root / "eval").glob("*/results.json").__next__().read_text())
    assert report["step"] == 7 and report["data_version"] == {"md5": "d41d8cd9"}
    promoted = Registry(root / "registry", ObjectStore()).promoted
    assert promoted["source_checkpoint"] == str(folder) and promoted["data_version"]["md5"] == "d41d8cd9"
    assert promoted["config"]["model"]["video"]["num_layers"] == 1
    # a RayJob's outcome file (`vatt evaluate --outcome`) reads back as the same outcome, its
    # metrics table included (the evaluate flow's task returns an EvaluationOutcome either way)
    from vatt.evaluate.pipeline import outcome_from_summary, outcome_summary
    from vatt.evaluate.report import result_rows

    for outcome in (first, second):
        summary = outcome_summary(outcome)
        again = outcome_from_summary(json.loads(json.dumps(summary)))
        assert outcome_summary(again) == summary and again.decision == outcome.decision
        assert result_rows(again.results) == result_rows(outcome.results)


def test_corrupt_checkpoint_is_clear_and_registry_unchanged(checkpoint, tmp_path):
    root, folder = checkpoint
    registry = Registry(root / "registry", ObjectStore())
    if not registry.path.exists():  # make sure there is a registry to protect
        test_evaluate_checkpoint_twice_same_numbers_and_registry(checkpoint)
    before = registry.path.read_bytes()
    broken = tmp_path / "exp2" / "checkpoint_00000009"
    broken.mkdir(parents=True)
    for name in ("config.yaml", "state.json"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        _load(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        _load(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint("latest", str(tmp_path / "empty"), ObjectStore())
    assert registry.path.read_bytes() == before


def test_a_task_subset_without_the_promotion_metric_keeps_its_report(checkpoint):
    root, folder = checkpoint
    data = {"test": _batches(2, 6)}
    registry = Registry(root / "registry", ObjectStore())
    before = registry.path.read_bytes() if registry.path.exists() else None
    with pytest.raises(RegistryError, match=r"evaluation itself is saved: .*--no-promote") as err:
        evaluate_checkpoint(_load(folder), jobs_of(data, "text_video_retrieval"),
                            store=ObjectStore())
    saved = str(err.value).split("evaluation itself is saved: ")[1].split(";")[0]
    results = json.loads((Path(saved) / "results.json").read_text())
    assert "text_video_retrieval.R@10" in results["metrics"]
    assert (registry.path.read_bytes() if registry.path.exists() else None) == before
    # without the gate the same subset is a plain evaluation
    outcome = evaluate_checkpoint(_load(folder), jobs_of(data, "text_video_retrieval"),
                                  promote=False, store=ObjectStore())
    assert outcome.decision is None


def test_a_report_in_the_same_second_gets_its_own_folder(tmp_path, monkeypatch):
    from vatt.evaluate import pipeline
    from vatt.storage import ObjectStore

    class Frozen:  # every call in the same UTC second
        @staticmethod
        def now(tz=None):
            from datetime import datetime
            return datetime(2026, 11, 27, 12, 0, 0, tzinfo=tz)

    monkeypatch.setattr(pipeline, "datetime", Frozen)
    cfg = load_config("tiny", [f"eval.output_path={tmp_path}"])
    checkpoint, store = str(tmp_path / "runs" / "exp1" / "checkpoint_00000007"), ObjectStore()
    folders = []
    for _ in range(3):
        folder = pipeline._new_report_folder(cfg, checkpoint, 7, store)
        Path(folder).mkdir()
        (Path(folder) / "results.json").write_text("{}")
        folders.append(Path(folder).name)
    assert folders == ["exp1-step7-20261127T120000Z", "exp1-step7-20261127T120000Z-2",
                       "exp1-step7-20261127T120000Z-3"]


def test_an_evaluation_takes_the_model_from_the_checkpoint_and_only_its_settings(checkpoint,
                                                                               caplog):
    """The evaluated config is the checkpoint's model and input with the evaluation's settings
    (eval.*, storage.*, data.path, windows and captions per clip), whatever the evaluation's
    config says of the model; an override of the model or its input is named in a warning as
    not applied, not silently dropped."""
    from vatt.evaluate.pipeline import note_unused_overrides

    _, folder = checkpoint
    saved = read_config(folder, ObjectStore())
    unused = ["model.video.drop_rate=0.1", "model.heads.va_dim=32", "data.frame_size=32"]
    taken = ["eval.probe.epochs=3", "data.path=elsewhere", "data.eval_num_windows=1",
             "train.storage_path=runs"]
    with caplog.at_level("WARNING", logger="vatt.evaluate"):
        assert note_unused_overrides([*taken, *unused]) == unused
    assert "data.frame_size=32: not applied" in caplog.text
    caplog.clear()
    assert note_unused_overrides(taken) == [] and not caplog.text
    settings = load_config("tiny", ["model.sharing=agnostic", "data.frame_size=32",
                                    "eval.probe.epochs=3", "data.path=elsewhere",
                                    "data.eval_num_windows=1"])
    cfg = load_checkpoint_for_eval(folder, ObjectStore(), settings).config
    assert cfg.eval == settings.eval and cfg.data.path == "elsewhere"
    assert cfg.data.eval_num_windows == 1 and cfg.data.frame_size == saved.data.frame_size
    assert cfg.model == saved.model and cfg.name == saved.name


def test_a_saved_config_is_data_its_interpolations_are_refused(checkpoint, tmp_path, monkeypatch):
    import shutil

    _, folder = checkpoint
    copy = tmp_path / "checkpoint_00000007"
    shutil.copytree(folder, copy)
    text = (copy / "config.yaml").read_text()
    monkeypatch.setenv("VATT_TEST_SECRET", "hunter2")
    (copy / "config.yaml").write_text(
        text.replace("output_path: ", "output_path: ${oc.env:VATT_TEST_SECRET}", 1))
    with pytest.raises(CheckpointError, match=r"interpolations at eval\.output_path") as refused:
        read_config(copy, ObjectStore())
    assert "hunter2" not in str(refused.value)


def test_a_promoted_model_outlives_its_runs_checkpoints(checkpoint, tmp_path):
    """Ray Train deletes old checkpoints as a run goes on (train.keep_checkpoints); the
    registry keeps its own copy of what it promoted."""
    import shutil

    _, folder = checkpoint
    run = tmp_path / "runs" / "exp2" / "checkpoint_00000007"
    shutil.copytree(folder, run)
    registry = Registry(tmp_path / "registry", ObjectStore())
    decision = registry.consider(run, config={"name": "tiny"}, data_version={"md5": "d41d8cd9"},
                                 metrics={"action_linear.top1": 0.5}, metric="action_linear.top1")
    assert decision.promoted
    expected = load_checkpoint_for_eval(run, ObjectStore()).model.state_dict()
    shutil.rmtree(run)  # rotated away by the run's later checkpoints
    promoted = registry.promoted
    assert promoted["source_checkpoint"] == str(run)
    loaded = load_checkpoint_for_eval(promoted["checkpoint"], ObjectStore())
    assert loaded.step == 7
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, expected[name])


def test_an_evaluation_reads_each_checkpoint_file_once(checkpoint):
    """The config, vocabulary and weights are read once per evaluation (they were read two and
    three times), and the report records the hash of the weights that were evaluated."""
    import hashlib
    from collections import Counter

    root, folder = checkpoint

    class CountingStore(ObjectStore):  # the real local store, counting what it reads
        reads: Counter = Counter()

        def read_bytes(self, uri):
            if str(uri).startswith(str(folder)):
                self.reads[Path(str(uri)).name] += 1
            return super().read_bytes(uri)

    store = CountingStore()
    data = {"test": _batches(2, 6)}
    outcome = evaluate_checkpoint(load_checkpoint_for_eval(str(folder), store),
                                  jobs_of(data, "text_video_retrieval"), promote=False,
                                  store=store)
    assert outcome.results["step"] == 7
    assert store.reads["model.pt"] == 1 and store.reads["config.yaml"] == 1
    assert max(store.reads.values()) == 1, store.reads
    loaded = load_checkpoint_for_eval(folder, ObjectStore())
    assert loaded.weights_sha256 == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()


def test_an_s3_checkpoint_is_evaluated_through_the_configured_store(checkpoint, s3_env, tmp_path,
                                                                    monkeypatch):
    """The store built from storage.* (here only storage.endpoint_url names the S3 server; the
    environment names none) reads the checkpoint, writes the report and fills the registry: no
    part of the evaluation builds a store of its own."""
    import time

    from vatt.config import StorageConfig

    _, folder = checkpoint
    prefix = f"s3://{s3_env.bucket}/eval-{time.time_ns()}"
    ObjectStore().upload_dir(folder, f"{prefix}/runs/exp1/checkpoint_00000007")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    store = ObjectStore(StorageConfig(endpoint_url=s3_env.endpoint_url, max_attempts=1,
                                      connect_timeout_s=1))
    found = resolve_checkpoint("latest", f"{prefix}/runs", store)
    assert found == f"{prefix}/runs/exp1/checkpoint_00000007"
    loaded = _load(found, store, [f"eval.output_path={prefix}/eval",
                                  f"eval.registry_path={prefix}/registry"])
    outcome = evaluate_checkpoint(loaded, jobs_of({"train": _batches(1, 9),
                                                   "test": _batches(2, 6)}, "action_linear"),
                                  store=store)
    assert outcome.report_uri.startswith(f"{prefix}/eval/exp1-step7-")
    assert store.exists(f"{outcome.report_uri}/results.json")
    promoted = Registry(f"{prefix}/registry", store).promoted
    assert outcome.decision.promoted and promoted["source_checkpoint"] == found
    kept = store.read_bytes(f"{promoted['checkpoint']}/model.pt")
    assert kept == (folder / "model.pt").read_bytes()


def test_a_changed_split_re_measures_the_promoted_model(checkpoint, tmp_path):
    """Champion and challenger on the same data: the candidate is evaluated on a test split the
    promoted model's number was not measured on, so the promoted model (the registry's copy of
    its weights) is evaluated on it in the same run and the gate decides on the two numbers."""
    _, folder = checkpoint
    cfg = load_config("tiny", OVERRIDES)
    torch.manual_seed(1)
    challenger = tmp_path / "runs" / "exp3" / "checkpoint_00000011"
    model = build_model(cfg)
    save_checkpoint(challenger, rank=0, state=TrainState(step=11), model=model,
                    optimizer=torch.optim.Adam(model.parameters()), cfg=cfg,
                    data_version={"md5": "e5"})
    overrides = [f"eval.registry_path={tmp_path}/registry", f"eval.output_path={tmp_path}/eval",
                 "eval.promotion.metric=text_video_retrieval.MRR"]
    old, new = {"test": _batches(2, 6)}, {"test": _batches(3, 6)}
    store = ObjectStore()

    def evaluate(checkpoint, data, promote=True):
        return evaluate_checkpoint(_load(checkpoint, store, overrides),
                                   jobs_of(data, "text_video_retrieval"), promote, store=store)

    assert evaluate(folder, old).decision.promoted  # the first model
    champion_on_new = evaluate(folder, new, promote=False).results["metrics"]
    decision = evaluate(challenger, new).decision
    assert decision.promoted_value_source == "re-measured", decision
    assert decision.promoted_value == pytest.approx(
        champion_on_new["text_video_retrieval.MRR"], abs=1e-6)
    assert decision.margin >= 0.06  # the tiny preset's measured noise, or more
    # (these seeds: 0.514 vs the promoted model's 0.386 on the new split, beyond two paired
    # standard errors of its 6 queries)
    assert decision.promoted and "re-measured on this evaluation's data" in decision.reason
    assert Registry(tmp_path / "registry", store).promoted["source_checkpoint"] == str(challenger)
    # the next candidate on the same split compares with a stored number, no re-measurement
    again = evaluate(challenger, new).decision
    assert again.promoted_value_source == "stored" and not again.promoted

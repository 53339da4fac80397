"""Evaluation data from the ingested default dataset through the real loader (local Ray): which
dataset feeds which task, the manifests' class counts, streaming, memory, vocabularies. That the
same checkpoint evaluated again (read afresh through Ray Data) gives the same numbers is
test_readme_commands.py's `vatt evaluate --checkpoint latest` after the session's pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vatt.config import load_config
from vatt.data.loader import DataError
from vatt.storage import ObjectStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import ray

    from vatt.data.ingest import ingest
    from vatt.model import build_model
    from vatt.train.resume import TrainState, save_checkpoint

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    root = tmp_path_factory.mktemp("evaldata")
    cfg = load_config("tiny", [f"data.path={root / 'data'}", "data.ingest.synthetic_scale=0.1",
                               f"train.storage_path={root / 'runs'}",
                               f"eval.output_path={root / 'eval'}",
                               f"eval.registry_path={root / 'registry'}",
                               "eval.probe.epochs=20", "data.eval_num_windows=2"])
    ingest(cfg, "synthetic", None, root / "data", progress=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    folder = root / "runs" / "init" / "checkpoint_00000000"
    save_checkpoint(folder, rank=0, state=TrainState(step=0), model=model,
                    optimizer=torch.optim.Adam(model.parameters()), cfg=cfg, data_version=None)
    yield cfg, folder
    if started:
        ray.shutdown()


def _splits(jobs):
    """{(task, dataset): its splits by role} of a plan's jobs."""
    return {(job.task.name, job.dataset): job.splits for job in jobs}


def test_tasks_read_their_datasets_sorted_with_manifest_classes(setup):
    from vatt.evaluate.data import plan

    cfg, _ = setup
    jobs, _ = plan(cfg)
    # the generated default: every dataset a task reads, found by its manifest's source, the
    # paper's probe set first (what the flat <task>.<metric> keys mean)
    assert [(job.task.name, job.dataset) for job in jobs] == [
        ("action_linear", "synthetic-ucf101"), ("action_linear", "synthetic-kinetics"),
        ("audio_linear", "synthetic-esc50"), ("audio_linear", "synthetic-audioset"),
        ("text_video_retrieval", "synthetic-msrvtt"),
        ("text_video_retrieval", "synthetic-youcook2"),
        ("video_audio_retrieval", "synthetic-msrvtt"),
        ("video_audio_retrieval", "synthetic-youcook2")]
    first = {}
    for job in jobs:
        first.setdefault(job.task.name, job)
    data = {task: job.splits for task, job in first.items()}
    action, audio = data["action_linear"], data["audio_linear"]
    assert (action["train"].dataset, action["test"].dataset) == ("synthetic-ucf101",) * 2
    assert audio["test"].dataset == "synthetic-esc50"
    assert data["text_video_retrieval"]["test"] is data["video_audio_retrieval"]["test"]
    assert first["action_linear"].num_classes == 8 and first["audio_linear"].num_classes == 8
    assert "video" not in next(iter(audio["train"]))  # audio-only source: no video tensor kept
    # ESC-50 layout: folds 1-4 train, 5 test; the audio probe leaves each fold out in turn
    assert {int(f) for b in audio["train"] for f in b["fold"]} == {1, 2, 3, 4}
    assert {int(f) for b in audio["test"] for f in b["fold"]} == {5}
    for split in (action["train"], data["text_video_retrieval"]["test"]):
        order = [(int(c), int(w)) for b in split for c, w in zip(b["clip_index"], b["window"])]
        assert order == sorted(order) and len(set(order)) == len(order)
        assert {int(w) for _, w in order} == {0, 1}  # data.eval_num_windows windows per clip


def test_finetuning_tests_on_windows_times_the_specs_crops(setup):
    from vatt.evaluate.data import plan

    cfg, _ = setup
    data = _splits(plan(cfg, ["action_linear", "action_finetune"])[0])
    probe = data["action_linear", "synthetic-ucf101"]
    finetune = data["action_finetune", "synthetic-ucf101"]
    # fine-tuning trains on training windows (the loader's augmentation), the probe on its own
    assert finetune["train"].training and not probe["train"].training
    assert finetune["train"].views_per_clip == 1 and probe["train"].views_per_clip == 2
    views = [(int(c), int(w)) for b in finetune["test"] for c, w in zip(b["clip_index"], b["window"])]
    assert {w for _, w in views} == set(range(2 * 3))  # 2 windows x eval.finetune.test_crops=3
    assert len(views) == 3 * sum(len(b["window"]) for b in probe["test"])


def test_finetuning_trains_on_augmented_windows_and_tests_on_fixed_ones(setup):
    """The fine-tuning train split through the real loader in training mode: each epoch a new
    random window / crop / flip of every clip (uint8, as the shuffle buffer holds it), the same
    epoch again for the same seed; the test split's evaluation windows the same every time."""
    from vatt.evaluate.data import plan

    cfg, _ = setup
    [job], _ = plan(cfg, ["action_finetune"], datasets={"action_finetune": ["synthetic-ucf101"]})
    train, test = job.splits["train"], job.splits["test"]

    def per_clip(batches):
        out = {}
        for batch in batches:
            for clip, window, video in zip(batch["clip_index"], batch["window"], batch["video"]):
                out[int(clip), int(window)] = video.clone()
        return out

    first, again, second = (per_clip(train.shuffled(seed)) for seed in (1, 1, 2))
    assert len(first) == train.num_clips and {w for _, w in first} == {0}  # a window a clip
    assert next(iter(first.values())).dtype == torch.uint8
    assert all(torch.equal(first[k], again[k]) for k in first)  # seeded: reproducible
    changed = [k for k in first if not torch.equal(first[k], second[k])]
    assert len(changed) == len(first)  # every clip cropped anew in the next epoch
    # none is one of the evaluation windows of its clip (what fine-tuning trained on before)
    from vatt.data.loader import video_to_float
    from vatt.evaluate.data import read_split

    evaluation = per_clip(read_split(cfg, "synthetic-ucf101", "train", ["video"]))
    for (clip, _), video in first.items():
        as_float = video_to_float(video[None])[0]
        assert not any(torch.allclose(as_float, evaluation[clip, w], atol=0.02) for w in (0, 1))
    fixed, fixed_again = per_clip(test), per_clip(test)
    assert fixed.keys() == fixed_again.keys() and len(fixed) == test.num_clips * 3 * 2
    assert all(torch.equal(fixed[k], fixed_again[k]) for k in fixed)
    assert next(iter(fixed.values())).dtype == torch.float32  # evaluation batches: float


def test_epochs_read_in_one_execution_are_the_epochs_read_one_by_one(setup):
    """Fine-tuning reads the epochs its steps need in one Ray Data execution
    (`EvalSplit.passes`): the same windows in the same order as reading each epoch on its own
    (`shuffled`: Ray Data's randomize_block_order and the epoch's seeded augmentation), so its
    numbers are those of one execution per epoch; the training stream marks the epochs."""
    from vatt.config import FinetuneConfig
    from vatt.evaluate.data import plan
    from vatt.evaluate.finetune import _TrainingStream

    cfg, _ = setup
    [job], _ = plan(cfg, ["action_finetune"], datasets={"action_finetune": ["synthetic-ucf101"]})
    train = job.splits["train"]
    seeds = (2, 3, 4)  # two shards: seed 2 reads them in the manifest's order, 3 and 4 not
    one_by_one = [(seed, int(c), video) for seed in seeds for b in train.shuffled(seed)
                  for c, video in zip(b["clip_index"], b["video"])]
    together = [(int(s), int(c), video) for b in train.passes(seeds)
                for s, c, video in zip(b["pass_seed"], b["clip_index"], b["video"])]
    assert [row[:2] for row in together] == [row[:2] for row in one_by_one]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(together, one_by_one))
    # something to check: the passes order the clips differently
    orders = [[c for s, c, _ in one_by_one if s == seed] for seed in seeds]
    assert orders[0] != orders[1] == orders[2] and sorted(orders[0]) == sorted(orders[1])
    # the training stream: epoch e is shuffled(seed + e), its labelled windows counted
    settings = FinetuneConfig(steps=6, batch_size=8)
    stream = _TrainingStream(train, 8, settings, "action_finetune", seed=2)
    windows = stream._windows()
    read = [next(windows).inputs for _ in range(len(one_by_one) + 1)]
    assert all(torch.equal(a, b[2]) for a, b in zip(read, one_by_one))
    assert stream.windows_per_epoch == train.num_clips == len(orders[0])


def test_missing_dataset_is_a_clear_error(setup):
    from vatt.evaluate.data import plan

    cfg, _ = setup
    with pytest.raises(DataError, match="action_linear.*kinetics"):
        plan(cfg, ["action_linear"], datasets={"action_linear": "kinetics"})


def test_evaluation_encodes_captions_with_the_checkpoints_vocabulary(setup, tmp_path):
    """Ingesting a new captioned source after pretraining re-ranks data/vocab.json; the old
    model's captions must still be encoded with the words it was trained on."""
    import shutil

    from vatt.config import replace
    from vatt.data.loader import load_vocab_words
    from vatt.evaluate.data import plan
    from vatt.checkpoints import read_vocabulary
    from vatt.evaluate.pipeline import load_checkpoint_for_eval
    from vatt.model import build_model
    from vatt.train.resume import TrainState, save_checkpoint

    cfg, _ = setup
    data = tmp_path / "data"
    shutil.copytree(cfg.data.path, data)
    moved = replace(cfg, [f"data.path={data}"])
    words = load_vocab_words(str(data))
    model = build_model(moved)
    folder = tmp_path / "runs" / "r" / "checkpoint_00000001"
    save_checkpoint(folder, rank=0, state=TrainState(step=1), model=model,
                    optimizer=torch.optim.Adam(model.parameters()), cfg=moved, data_version=None,
                    vocab_words=words)

    def caption_ids(vocab_words=None):
        job = plan(moved, ["text_video_retrieval"], vocab_words=vocab_words)[0][0]
        split = job.splits["test"]
        return torch.cat([batch["text"] for batch in split])

    trained_with = caption_ids()
    shifted = (*words[:2], *reversed(words[2:]))  # what a re-ranked vocabulary does to the ids
    (data / "vocab.json").write_text(json.dumps({"words": list(shifted)}))
    assert read_vocabulary(folder, ObjectStore()) == words
    assert load_checkpoint_for_eval(folder, ObjectStore()).vocab_words == words
    assert torch.equal(caption_ids(read_vocabulary(folder, ObjectStore())), trained_with)
    assert not torch.equal(caption_ids(), trained_with)  # the drift the checkpoint prevents


def _read_all_at_once(cfg, dataset, split, columns):
    """What evaluation did before it streamed: every decoded window of the split in memory,
    sorted by (clip, window), then cut into eval.batch_size batches."""
    import numpy as np

    from vatt.data.loader import build_dataset, video_to_float
    from vatt.evaluate.data import METADATA

    ds = build_dataset(cfg, split, training=False, dataset=dataset)
    parts = {}
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for key in {*columns, *METADATA, "clip_index", "window", "has_video"} & set(batch):
            parts.setdefault(key, []).append(batch[key])
    rows = {key: np.concatenate(value) for key, value in parts.items()}
    if "video" in rows:  # rows hold uint8 pixels; batches float32 in [-1, 1]
        rows["video"] = video_to_float(torch.from_numpy(rows["video"]), rows["has_video"]).numpy()
    order = np.lexsort((rows["window"], rows["clip_index"]))
    size = cfg.eval.batch_size
    return [{key: [str(v) for v in value[order[i:i + size]]] if value.dtype.kind in "OUS"
             else torch.from_numpy(np.ascontiguousarray(value[order[i:i + size]]))
             for key, value in rows.items()} for i in range(0, len(order), size)]


def test_streamed_features_equal_the_all_at_once_features(setup):
    import numpy as np

    from vatt.evaluate.data import read_split
    from vatt.evaluate.features import extract_features
    from vatt.model import build_model

    cfg, _ = setup
    torch.manual_seed(0)
    model = build_model(cfg)
    columns = ["video", "audio", "text"]
    streamed = extract_features(model, read_split(cfg, "synthetic-msrvtt", "test", columns),
                                columns)
    held = extract_features(model, _read_all_at_once(cfg, "synthetic-msrvtt", "test",
                                                     [*columns, "text_mask"]), columns)
    assert sorted(streamed.windows) == sorted(held.windows) and len(streamed) > 0
    for name in held.windows:
        assert np.array_equal(streamed.windows[name], held.windows[name]), name
    for name in held.captions:
        assert np.array_equal(streamed.captions[name], held.captions[name]), name


def test_extraction_memory_does_not_grow_with_the_split(setup, tmp_path):
    """The same shards listed once and four times (4x the clips): extracting features from the
    larger split must not take more memory; holding the split's windows (as evaluation did)
    takes four times as much."""
    import shutil
    import tracemalloc

    from vatt.config import replace
    from vatt.evaluate.data import read_split
    from vatt.evaluate.features import extract_features
    from vatt.model import build_model

    cfg, _ = setup
    for name, copies in (("once", 1), ("four-times", 4)):
        folder = tmp_path / name
        shutil.copytree(f"{cfg.data.path}/synthetic-ucf101", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["splits"]["train"]["shards"] *= copies
        (folder / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(f"{cfg.data.path}/vocab.json", tmp_path / "vocab.json")
    cfg = replace(cfg, [f"data.path={tmp_path}"])
    model = build_model(cfg)

    def peak(dataset, read):
        tracemalloc.start()
        try:
            features = extract_features(model, read(dataset), ["video"])
            return tracemalloc.get_traced_memory()[1], len(features)
        finally:
            tracemalloc.stop()

    def streamed(dataset):
        return read_split(cfg, dataset, "train", ["video"])

    def held(dataset):
        return _read_all_at_once(cfg, dataset, "train", ["video"])

    peak("once", streamed)  # first use: imports and one-time allocations are not the split's
    (small, windows), (large, four_times) = peak("once", streamed), peak("four-times", streamed)
    assert four_times == 4 * windows
    assert large < 1.5 * small, (small, large)
    # the check has teeth: the split held in memory grows with it
    held_small, held_large = peak("once", held)[0], peak("four-times", held)[0]
    assert held_large > 2.5 * held_small and held_large > 1.5 * large, (held_small, held_large)


def test_finetuning_reads_its_splits_from_the_loader(setup):
    from vatt.config import replace
    from vatt.evaluate.data import plan
    from vatt.evaluate.runner import evaluate_model
    from vatt.model import build_model

    cfg, _ = setup
    cfg = replace(cfg, ["eval.finetune.steps=3", "eval.finetune.warmup_steps=1",
                        "eval.finetune.batch_size=4", "eval.finetune.test_crops=1"])
    jobs, _ = plan(cfg, ["action_finetune"], datasets={"action_finetune": ["synthetic-ucf101"]})
    torch.manual_seed(0)
    result = evaluate_model(build_model(cfg), cfg, jobs)
    test = jobs[0].splits["test"]
    m = result["metrics"]
    assert m["action_finetune.num_test_windows"] == test.num_clips * test.views_per_clip
    assert 0 <= m["action_finetune.top1"] <= 1 and m["action_finetune.steps"] == 3


def test_two_datasets_of_one_source_evaluated_in_one_run(setup, tmp_path):
    """The generated Kinetics layout ingested twice, as `kinetics400` and `kinetics600`, beside
    each other: one evaluation reads both through the loader and gives a row per dataset."""
    from vatt.config import replace
    from vatt.data.ingest import ingest
    from vatt.evaluate.data import describe_jobs, plan
    from vatt.evaluate.runner import evaluate_model
    from vatt.model import build_model

    cfg, _ = setup
    raw = Path(cfg.data.path).parent / ".cache" / "synthetic-raw" / "kinetics"  # generated
    for name in ("kinetics400", "kinetics600"):
        [summary] = ingest(cfg, "kinetics", str(raw), tmp_path, progress=False, name=name)
        assert summary["name"] == name and summary["quarantined"] == 0
    from vatt.data.loader import load_vocab_words

    words = load_vocab_words(str(cfg.data.path))  # Kinetics has no captions: the model's words
    cfg = replace(cfg, [f"data.path={tmp_path}"])
    jobs, _ = plan(cfg, ["action_linear"], vocab_words=words)
    assert [job.dataset for job in jobs] == ["kinetics400", "kinetics600"]
    assert all(line.startswith("action_linear") for line in describe_jobs(jobs))
    torch.manual_seed(0)
    results = evaluate_model(build_model(cfg), cfg, jobs)
    m = results["metrics"]
    for name in ("kinetics400", "kinetics600"):
        # tested on val, the split the paper reports for Kinetics: 8 motions x 1 val clip
        assert m[f"action_linear@{name}.num_test_videos"] == 8
        assert results["tasks"][f"action_linear@{name}"]["class_names"][0] == "bouncing"
    # the same clips and the same model: the same numbers, and the first is the flat key
    assert m["action_linear@kinetics400.top1"] == m["action_linear@kinetics600.top1"] \
        == m["action_linear.top1"]


def test_a_promoted_model_measured_otherwise_is_re_measured_on_the_ingested_data(setup, tmp_path):
    """`vatt evaluate`'s path (run_evaluation): the candidate is evaluated with one window per
    clip where the promoted model's number had two, so the promoted model is read back from the
    registry and evaluated on the same ingested split with the candidate's settings (its data
    built for it through the loader) before the gate decides; the same weights give the same
    number, so nothing is promoted."""
    from vatt.config import replace
    from vatt.evaluate.pipeline import run_evaluation

    cfg, folder = setup
    common = [f"eval.registry_path={tmp_path / 'registry'}", f"eval.output_path={tmp_path / 'eval'}"]
    tasks, datasets = ["text_video_retrieval"], {"text_video_retrieval": ["synthetic-msrvtt"]}
    first = run_evaluation(str(folder), replace(cfg, common), tasks, datasets)
    assert first.decision.promoted
    fewer = run_evaluation(str(folder), replace(cfg, [*common, "data.eval_num_windows=1"]), tasks,
                           datasets)
    decision = fewer.decision
    assert decision.promoted_value_source == "re-measured", decision.reason
    assert decision.promoted_value == pytest.approx(decision.candidate_value, abs=1e-6)
    assert not decision.promoted and "data.eval_num_windows 2 -> 1" in decision.reason

"""The model registry: promotion gate, decision log, atomicity on bad input."""

import json

import pytest
import torch

from vatt.checkpoints import CheckpointError
from vatt.evaluate.registry import ChampionMeasure, Registry, RegistryError, paired_noise
from vatt.storage import ObjectStore


def _checkpoint(tmp_path, name, seed=0):
    folder = tmp_path / "runs" / name
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(4, 2).state_dict(), folder / "model.pt")
    return folder


def _consider(registry, ckpt, value, metric="text_video_retrieval.R@10"):
    return registry.consider(ckpt, config={"name": "tiny"}, data_version={"md5": "abc"},
                             metrics={metric: value, "action_linear.top1": 0.5}, metric=metric,
                             evaluation=_evaluation())


def test_first_promoted_then_only_not_worse(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    assert registry.promoted is None
    first = _consider(registry, _checkpoint(tmp_path, "a", 0), 0.30)
    assert first.promoted and first.promoted_value is None
    worse = _consider(registry, _checkpoint(tmp_path, "b", 1), 0.20)
    assert not worse.promoted
    assert (worse.candidate_value, worse.promoted_value) == (0.20, 0.30)
    equal = _consider(registry, _checkpoint(tmp_path, "c", 2), 0.30)
    assert equal.promoted
    doc = registry.read()
    assert doc["promoted"]["source_checkpoint"].endswith("c")
    kept = doc["promoted"]["checkpoint"]  # the registry's own copy of the weights
    assert kept.startswith(str(tmp_path / "registry" / "models"))
    assert torch.equal(torch.load(f"{kept}/model.pt", weights_only=True)["weight"],
                       torch.load(tmp_path / "runs" / "c" / "model.pt", weights_only=True)["weight"])
    assert doc["promoted"]["data_version"] == {"md5": "abc"}
    assert doc["promoted"]["config"] == {"name": "tiny"}
    assert len(doc["promoted"]["weights_sha256"]) == 64
    assert [d["promoted"] for d in doc["decisions"]] == [True, False, True]
    assert all("candidate_value" in d and "promoted_value" in d for d in doc["decisions"])
    # the lease file stays, naming no holder once released
    assert (tmp_path / "registry" / "registry.lock").read_text() == ""
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == [
        "models", "registry.json", "registry.lock"]
    assert len(list((tmp_path / "registry" / "models").iterdir())) == 2  # a and c, not b


def test_lower_is_better_metric(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    _consider(registry, _checkpoint(tmp_path, "a"), 10.0, metric="text_video_retrieval.MedR")
    assert _consider(registry, _checkpoint(tmp_path, "b"), 8.0,
                     metric="text_video_retrieval.MedR").promoted
    assert not _consider(registry, _checkpoint(tmp_path, "c"), 9.0,
                         metric="text_video_retrieval.MedR").promoted


def _snapshot(registry):
    return registry.path.read_bytes()


def test_missing_or_corrupt_checkpoint_leaves_registry_unchanged(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    _consider(registry, _checkpoint(tmp_path, "a"), 0.3)
    before = _snapshot(registry)

    with pytest.raises(CheckpointError, match="does not exist"):
        _consider(registry, tmp_path / "runs" / "nope", 0.9)
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model.pt"):
        _consider(registry, empty, 0.9)
    corrupt = _checkpoint(tmp_path, "corrupt")
    data = (corrupt / "model.pt").read_bytes()
    (corrupt / "model.pt").write_bytes(data[: len(data) // 2])  # truncated copy
    with pytest.raises(CheckpointError, match="corrupt"):
        _consider(registry, corrupt, 0.9)
    assert _snapshot(registry) == before


def test_unknown_metric_and_corrupt_registry(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    _consider(registry, _checkpoint(tmp_path, "a"), 0.3)
    before = _snapshot(registry)
    with pytest.raises(RegistryError, match="action_linear.top1"):
        registry.consider(_checkpoint(tmp_path, "b"), config={}, data_version=None,
                          metrics={"action_linear.top1": 0.9}, metric="audio_linear.mAP")
    assert _snapshot(registry) == before

    registry.path.write_text('{"promoted": ')  # e.g. a half-written file from another tool
    with pytest.raises(RegistryError, match="not valid JSON"):
        _consider(registry, _checkpoint(tmp_path, "c"), 0.9)
    assert registry.path.read_text() == '{"promoted": '
    assert json.loads(before)["promoted"]["metrics"]["text_video_retrieval.R@10"] == 0.3


def _evaluation(dataset="synthetic-msrvtt", digest="a" * 64, probe_epochs=100, code="c0de"):
    retrieval = {"dataset": dataset, "splits": {"test": digest},
                 "settings": {"data.eval_num_windows": 4, "data.num_text_candidates": 5},
                 "code": code}
    action = {"dataset": "synthetic-ucf101", "splits": {"train": "b" * 64, "test": "c" * 64},
              "settings": {"eval.probe.epochs": probe_epochs}, "code": code}
    return {"tasks": {"text_video_retrieval": retrieval,
                      "text_video_retrieval@" + dataset: retrieval,
                      "action_linear": action, "action_linear@synthetic-ucf101": action}}


METRIC = "text_video_retrieval.R@10"


def _measure(registry, value, evaluation, **kwargs):
    """The promoted model re-measured on a candidate's data, as the evaluation does it."""
    promoted = registry.promoted
    return ChampionMeasure(promoted["weights_sha256"], {METRIC: value}, evaluation, **kwargs)


def test_the_gate_compares_like_with_like(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())

    def consider(name, seed, value, evaluation, **kwargs):
        return registry.consider(_checkpoint(tmp_path, name, seed), config={}, data_version={},
                                 metrics={METRIC: value}, metric=METRIC,
                                 evaluation=evaluation, **kwargs)

    assert consider("msrvtt-1", 0, 0.40, _evaluation("msrvtt")).promoted
    # the same data, settings and code: compared with the stored number, a worse model refused
    worse = consider("msrvtt-2", 1, 0.35, _evaluation("msrvtt"))
    assert not worse.promoted and worse.promoted_value_source == "stored"
    # 0.20 on the generated set does not replace 0.40 on MSR-VTT: without a number of the
    # promoted model on the same data nothing is promoted, and the decision says why
    other = consider("synthetic", 2, 0.20, _evaluation("synthetic-msrvtt"))
    assert not other.promoted and other.promoted_value is None
    assert other.reason.startswith("not promoted: no comparable number for the promoted model")
    assert "msrvtt (test aaaaaaaaaaaa)" in other.reason and "synthetic-msrvtt" in other.reason
    assert "dataset msrvtt -> synthetic-msrvtt" in other.reason
    # ... nor does 0.98 there, however high
    assert not consider("synthetic-high", 3, 0.98, _evaluation("synthetic-msrvtt")).promoted
    # the same dataset at another content, other settings or other evaluation code: the same
    for seed, (changed, words) in enumerate((
            (_evaluation("msrvtt", "d" * 64), "test split content"),
            (_evaluation("msrvtt", code="beef"), "evaluation code c0de -> beef"))):
        decision = consider(f"v{seed}", 10 + seed, 0.9, changed)
        assert not decision.promoted and words in decision.reason
    # with the promoted model re-measured on the candidate's data the gate decides on the two
    # numbers: 0.20 vs its 0.30 there keeps it ...
    synthetic = _evaluation("synthetic-msrvtt")
    kept = consider("synthetic-2", 5, 0.20, synthetic,
                    champion=_measure(registry, 0.30, synthetic))
    assert not kept.promoted and (kept.candidate_value, kept.promoted_value) == (0.20, 0.30)
    assert kept.promoted_value_source == "re-measured" and "re-measured" in kept.reason
    # ... and its number on that data is recorded: the next candidate there compares with it
    doc = registry.read()
    assert doc["promoted"]["metrics"][METRIC] == 0.30
    assert doc["promoted"]["evaluation"]["tasks"]["text_video_retrieval"]["dataset"] == \
        "synthetic-msrvtt"
    assert doc["promoted"]["source_checkpoint"].endswith("msrvtt-1")
    better = consider("synthetic-3", 6, 0.35, synthetic)
    assert better.promoted and better.promoted_value_source == "stored"
    assert better.promoted_value == 0.30
    doc = registry.read()
    assert doc["promoted"]["evaluation"] == synthetic
    assert all(d["evaluation"] is not None and "margin" in d for d in doc["decisions"])
    # a different action dataset does not matter to a retrieval metric
    changed = _evaluation("synthetic-msrvtt")
    changed["tasks"]["action_linear"] = dict(changed["tasks"]["action_linear"],
                                             dataset="kinetics400")
    assert consider("synthetic-4", 7, 0.36, changed).reason == "not worse than the promoted model"


def test_a_failed_or_stale_re_measurement_promotes_nothing(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())
    consider = dict(config={}, data_version={}, metric=METRIC)
    assert registry.consider(_checkpoint(tmp_path, "a", 0), metrics={METRIC: 0.4},
                             evaluation=_evaluation("msrvtt"), **consider).promoted
    synthetic = _evaluation("synthetic-msrvtt")
    failed = ChampionMeasure(registry.promoted["weights_sha256"], {}, None,
                             error="CheckpointError: registry/models/x/model.pt is corrupt")
    decision = registry.consider(_checkpoint(tmp_path, "b", 1), metrics={METRIC: 0.9},
                                 evaluation=synthetic, champion=failed, **consider)
    assert not decision.promoted and "re-measuring it failed: CheckpointError" in decision.reason
    # measured on another model than the one promoted now (another evaluation promoted first)
    stale = ChampionMeasure("f" * 64, {METRIC: 0.1}, synthetic)
    decision = registry.consider(_checkpoint(tmp_path, "c", 2), metrics={METRIC: 0.9},
                                 evaluation=synthetic, champion=stale, **consider)
    assert not decision.promoted and "another model was promoted" in decision.reason
    # a promoted model evaluated under another gate metric has no number: it is re-measured too
    assert not registry.consider(_checkpoint(tmp_path, "d", 3),
                                 metrics={"text_video_retrieval.MRR": 0.9},
                                 **dict(consider, metric="text_video_retrieval.MRR"),
                                 evaluation=synthetic).promoted
    assert registry.read()["promoted"]["source_checkpoint"].endswith("a")


def test_the_margin_grows_with_the_paired_noise_of_the_queries(tmp_path):
    """MRR over a handful of queries is noisy: the margin is at least eval.promotion.noise_z
    standard errors of the two models' paired per-query difference."""
    ranks_a = [1, 2, 5, 1, 3, 8, 2, 1, 4, 6]
    ranks_b = [1, 1, 3, 2, 2, 4, 1, 1, 3, 5]  # better on most queries
    noise = paired_noise("t.MRR", ranks_b, ranks_a)
    diffs = [1 / b - 1 / a for a, b in zip(ranks_a, ranks_b)]
    mean = sum(diffs) / len(diffs)
    assert noise == pytest.approx((sum((d - mean) ** 2 for d in diffs) / 9 / 10) ** 0.5)
    assert paired_noise("t.R@5", ranks_b, ranks_a) > 0
    assert paired_noise("t.MedR", ranks_b, ranks_a) is None  # not a mean over queries
    assert paired_noise("t.MRR", ranks_b, ranks_a[:5]) is None  # not the same queries

    registry = Registry(tmp_path / "registry", ObjectStore())
    metric, evaluation = "text_video_retrieval.MRR", _evaluation("msrvtt")
    mrr = {name: sum(1 / r for r in ranks) / len(ranks) for name, ranks in
           (("a", ranks_a), ("b", ranks_b))}

    def consider(name, seed, ranks, z):
        return registry.consider(_checkpoint(tmp_path, name, seed), config={}, data_version={},
                                 metrics={metric: mrr[name[0]]}, metric=metric,
                                 evaluation=evaluation, margin=0.01, noise_z=z, ranks=ranks)

    assert consider("a", 0, ranks_a, 2.0).promoted
    assert registry.promoted["ranks"]["text_video_retrieval"] == ranks_a
    # b's MRR is 0.24 higher; two paired standard errors of these 10 queries are more than that
    noisy = consider("b1", 1, ranks_b, 2.0)
    assert mrr["b"] - mrr["a"] < 2 * noise and not noisy.promoted
    assert noisy.margin == pytest.approx(2 * noise) and "paired standard errors" in noisy.reason
    # with half a standard error required, the same difference is beyond the noise
    clear = consider("b2", 2, ranks_b, 0.5)
    assert clear.promoted and clear.margin == pytest.approx(max(0.01, 0.5 * noise))


def test_concurrent_evaluations_against_an_s3_registry_lose_no_decision(s3_env, tmp_path):
    """Six evaluations decide at the same moment against one registry on the real S3 server:
    every decision is recorded, each against the model promoted just before it."""
    import threading
    import time

    from vatt.storage import ObjectStore

    root = f"s3://{s3_env.bucket}/registry-{time.time_ns()}"
    values = [0.31, 0.52, 0.17, 0.44, 0.58, 0.26]
    registries, checkpoints = [], []
    for i in range(len(values)):
        store = ObjectStore()
        assert store.client is not None  # each thread its own client, made before they start
        registries.append(Registry(root, store))
        checkpoints.append(_checkpoint(tmp_path, f"c{i}", seed=i))
    start, errors = threading.Barrier(len(values)), []

    def evaluate(i):
        try:
            start.wait()
            _consider(registries[i], checkpoints[i], values[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=evaluate, args=(i,)) for i in range(len(values))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    doc = Registry(root, ObjectStore()).read()
    assert sorted(d["candidate_value"] for d in doc["decisions"]) == sorted(values)
    current = None
    for decision in doc["decisions"]:  # a consistent history: as if one after the other
        assert decision["promoted_value"] == current
        if decision["promoted"]:
            current = decision["candidate_value"]
    assert doc["promoted"]["metrics"]["text_video_retrieval.R@10"] == max(values) == current


def test_a_margin_promotes_only_differences_beyond_the_noise(tmp_path):
    registry = Registry(tmp_path / "registry", ObjectStore())

    def consider(name, seed, value, metric="text_video_retrieval.MRR"):
        return registry.consider(_checkpoint(tmp_path, name, seed), config={}, data_version={},
                                 metrics={metric: value}, metric=metric, margin=0.05,
                                 evaluation=_evaluation())

    assert consider("a", 0, 0.40).promoted
    within = consider("b", 1, 0.44)  # better, but by less than the run-to-run noise
    assert not within.promoted and "within run-to-run noise" in within.reason
    beyond = consider("c", 2, 0.46)
    assert beyond.promoted and "by at least the margin 0.05" in beyond.reason
    # lower-is-better metrics need the margin the other way
    registry = Registry(tmp_path / "registry-medr", ObjectStore())
    assert consider("d", 3, 10.0, "text_video_retrieval.MedR").promoted
    assert not consider("e", 4, 9.98, "text_video_retrieval.MedR").promoted
    assert consider("f", 5, 9.0, "text_video_retrieval.MedR").promoted


_HOLD = """
import sys, time
from vatt.evaluate.registry import Registry
from vatt.storage import ObjectStore
with Registry(sys.argv[1], ObjectStore())._lock():
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(root):
    """A gate process that takes the registry's lease and then hangs."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(root)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_gate_killed_while_it_holds_the_lease_does_not_block_the_next(tmp_path):
    """SIGKILL (or the OOM killer) leaves no chance to clean up: the lease is a flock, which
    the kernel releases with the process."""
    import signal

    root = tmp_path / "registry"
    holder = _holder(root)
    lease = json.loads((root / "registry.lock").read_text())
    assert lease["pid"] == holder.pid and lease["expires"] > lease["since"]
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    registry = Registry(root, ObjectStore())
    assert (root / "registry.lock").exists()  # the dead holder's file, with its lease
    assert _consider(registry, _checkpoint(tmp_path, "a"), 0.3).promoted  # at once, no wait


def test_a_live_holder_is_named_when_the_wait_ends(tmp_path):
    root = tmp_path / "registry"
    holder = _holder(root)
    try:
        registry = Registry(root, ObjectStore())
        with pytest.raises(RegistryError, match=rf"held by pid {holder.pid} on .* for over 1s"):
            with registry._lock(timeout_s=1.0):
                pass
        # past its lease the holder is stuck, and the error says to stop it
        lease = json.loads((root / "registry.lock").read_text())
        (root / "registry.lock").write_text(json.dumps(dict(lease, expires="2000-01-01")))
        with pytest.raises(RegistryError, match="lease expired at 2000-01-01, so it is stuck"):
            with registry._lock(timeout_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()

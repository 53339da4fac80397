"""Ray Tune sweeps (tuning/, `vatt sweep`, the Prefect `sweep` flow), on real Ray and real data.

One 2x2 sweep of `tiny` (4 steps per trial) is run once for the module, as a user runs it: from
the project folder of the session's `vatt pipeline` run, `vatt sweep tuning/heads_sharing.yaml`
with the default relative paths (data/ as data.path, sweeps/heads_sharing/ as the output), in a
subprocess, SIGKILLed (with its local Ray) after its first trial finished, then the same command
again, which resumes. Each trial runs in Tune's own trial folder, so a relative path the driver
did not resolve fails every trial here. The space is built so that ASHA has something to stop:
two of the four trials have 1-dimensional common-space heads, whose embeddings are +-1 and tie
with half of the items, so their validation MRR is far below a working head's at the first rung
(whatever the order of trials and the resume). The tests then read what it left, and train its
best.yaml through the Prefect `pretrain` flow (`config=sweeps/heads_sharing/best.yaml`).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import poll, vatt_command

SPACE = """\
metric: val_MRR
scheduler: {type: asha, grace_period: 2, reduction_factor: 4}
params:
  model.heads.vt_dim: {grid: [64, 1]}          # 1: built to lose (all ties in retrieval)
  model.heads.va_dim: {same_as: model.heads.vt_dim}
  model.sharing: {grid: [specific, agnostic]}
"""
FAST = ["train.optim.total_steps=4", "train.optim.warmup_steps=1", "train.log_every=2",
        "train.checkpoint_every=2", "train.validation.num_windows=1"]


SPACE_FILE = Path("tuning") / "heads_sharing.yaml"  # in the project folder, as a user keeps it
SWEEP_COMMAND = ["sweep", str(SPACE_FILE), *FAST]  # no --out, no data.path: the defaults


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "PREFECT_"))}


@pytest.fixture(scope="module")
def swept(default_pipeline):
    project = default_pipeline.project
    (project / SPACE_FILE).parent.mkdir(exist_ok=True)
    (project / SPACE_FILE).write_text(SPACE)
    out = project / "sweeps" / SPACE_FILE.stem  # `vatt sweep`'s default --out
    command = [*vatt_command(), *SWEEP_COMMAND]
    log_path = project / "sweep-first.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(command, cwd=project, env=_env(), stdout=log,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)
        # kill once the first trial has finished, the second has reported and Tune has saved
        # its state after that (every 2 s in a sweep), so the finished trial is on record
        poll(lambda: " finished: " in log_path.read_text() and "trial 2/4" in log_path.read_text(),
             "the sweep's first trial to finish and the second to report", 15 * 60, first, log_path)
        saved_before = _tune_state_saved(out)
        poll(lambda: _tune_state_saved(out) > saved_before, "Tune to save its state once more",
             60, first, log_path)
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
        first.wait(timeout=60)
    killed_log = log_path.read_text()
    finished_before = [line for line in killed_log.splitlines() if " finished: " in line]
    second = subprocess.run(command, cwd=project, env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=15 * 60)
    (project / "sweep-second.log").write_text(second.stdout)
    assert second.returncode == 0, second.stdout[-6000:]
    return {"out": out, "first": killed_log, "second": second.stdout, "space": project / SPACE_FILE,
            "finished_before": finished_before, "project": project}


def _tune_state_saved(out: Path) -> float:
    """When Tune last wrote its experiment state in `out` (0: not yet)."""
    saved = list((out / "tune").glob("experiment_state-*.json"))
    return max((path.stat().st_mtime for path in saved), default=0.0)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_sweep_writes_the_table_plot_and_best_config(swept):
    out = swept["out"]
    rows = _rows(out)
    assert len(rows) == 4
    assert {(r["model.heads.vt_dim"], r["model.sharing"]) for r in rows} == {
        ("64", "specific"), ("64", "agnostic"), ("1", "specific"), ("1", "agnostic")}
    for row in rows:
        assert row["model.heads.va_dim"] == row["model.heads.vt_dim"]  # same_as
        assert 0 < float(row["val_MRR"]) <= 1
        assert row["status"] != "finished" or float(row["step_s"]) > 0
        assert float(row["gflops_per_clip"]) > 0 and float(row["params_backbones_M"]) > 0
    # one backbone for all modalities has fewer parameters than one per modality
    by_sharing = {r["model.sharing"]: float(r["params_transformers_M"]) for r in rows}
    assert abs(by_sharing["agnostic"] * 3 - by_sharing["specific"]) < 0.01 * by_sharing["specific"]
    table = (out / "results.md").read_text()
    assert "| trial |" in table and "(best)" in table and "val_MRR" in table
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = yaml.safe_load((out / "best.yaml").read_text())
    finished = [r for r in rows if r["status"] == "finished"]
    winner = max(finished, key=lambda r: float(r["val_MRR"]))
    assert best["model"]["heads"]["vt_dim"] == int(winner["model.heads.vt_dim"]) == 64
    assert best["model"]["sharing"] == winner["model.sharing"]
    assert best["train"]["run_name"] is None and best["train"]["storage_path"] == "runs"


def test_asha_stops_the_trials_built_to_lose_early(swept):
    rows = _rows(swept["out"])
    stopped = [r for r in rows if r["status"].startswith("stopped early")]
    assert stopped, [r["status"] for r in rows]
    assert all(r["model.heads.vt_dim"] == "1" and r["step"] == "2" for r in stopped), stopped
    assert all(r["status"] == "finished" for r in rows if r["model.heads.vt_dim"] == "64")


def test_a_killed_sweep_resumes_without_running_finished_trials_again(swept):
    assert swept["finished_before"], swept["first"][-3000:]
    second = swept["second"]
    assert "resuming the sweep" in second and "trial(s) finished and are not run again" in second
    done_first = {line.split("[", 1)[1].split("]", 1)[0] for line in swept["finished_before"]}
    reported_again = {line.split("[", 1)[1].split("]", 1)[0] for line in second.splitlines()
                      if line.startswith("trial ") and " step " in line}
    assert not done_first & reported_again, (done_first, reported_again)
    assert all(r["status"] != "failed" for r in _rows(swept["out"]))
    # the first process's Ray went with it: no orphaned trial keeps training (a trial's
    # processes work in its folder under the sweep's output)
    leftover = []
    for proc in psutil.process_iter():
        try:
            if Path(proc.cwd()).is_relative_to(swept["out"]):
                leftover.append(" ".join(proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    assert leftover == [], leftover


def test_best_yaml_trains_as_is_through_the_pretrain_flow(swept, prefect_api, monkeypatch):
    """The sweep's best.yaml trains through Prefect: the `pretrain` flow with `config=
    sweeps/heads_sharing/best.yaml`, from the project folder. Its relative paths (data/, runs/)
    as the sweep wrote them resolve against the folder the flow runs in; the overrides apply on
    top; the run is named after the file. Runs go to a folder of their own so that `vatt
    evaluate --checkpoint latest` (test_readme_commands.py) still finds the pipeline's
    checkpoint under runs/."""
    from vatt_flows.pretrain import pretrain

    project = swept["project"]
    monkeypatch.chdir(project)
    best_yaml = (swept["out"] / "best.yaml").relative_to(project)
    state = pretrain(config=str(best_yaml), return_state=True, overrides=[
        *FAST, "train.optim.total_steps=2", "train.validation.every=0",
        "train.storage_path=best-runs"])
    assert state.is_completed(), state.message
    assert state.result()["run_name"].startswith("best-")  # pinned to the flow run, named for the file
    saved = yaml.safe_load(next((project / "best-runs").glob("best-*/checkpoint_*/config.yaml")).read_text())
    best = yaml.safe_load((swept["out"] / "best.yaml").read_text())
    assert saved["model"] == best["model"]  # the file's model, as is
    assert saved["train"]["optim"]["total_steps"] == 2  # and the override on top
    assert saved["data"]["path"] == str((project / "data").resolve())  # data/ of the project


def test_the_sweep_flow_publishes_the_table_and_plot(swept, prefect_api, monkeypatch):
    """The Prefect `sweep` flow on the finished sweep's folder, from the project folder with the
    CLI's arguments: it resumes (nothing left to run) and publishes the table, the report with
    the plot and the link to best.yaml."""
    from prefect.client.orchestration import get_client

    from vatt_flows.sweep import sweep

    monkeypatch.chdir(swept["project"])
    state = sweep(space=str(SPACE_FILE), overrides=FAST,
                  out=str(swept["out"].relative_to(swept["project"])), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["resumed"] is True

    async def artifacts():
        async with get_client() as client:
            found = await client.read_artifacts()
            return {a.key: a for a in found if a.key and a.key.startswith("vatt-sweep")}

    import asyncio

    found = asyncio.run(artifacts())
    assert {"vatt-sweep", "vatt-sweep-report", "vatt-sweep-best"} <= set(found)
    table = json.loads(found["vatt-sweep"].data) if isinstance(found["vatt-sweep"].data, str) \
        else found["vatt-sweep"].data
    assert len(table) == 4
    assert "data:image/png;base64," in found["vatt-sweep-report"].data


def test_bad_spaces_are_refused_before_any_trial(tmp_path):
    from vatt_tuning.space import SpaceError, check_space, load_space
    from vatt.config import load_config

    base = load_config("tiny")
    cases = {
        "unknown key": ("params:\n  model.video.dropp_rate: {grid: [0.1]}\n", "dropp_rate"),
        "empty": ("params: {}\n", "empty"),
        "bad kind": ("params:\n  model.sharing: {among: [specific]}\n", "exactly one of"),
        "refused value": ("params:\n  model.video.drop_rate: {grid: [0.5, 1.5]}\n", "drop_rate=1.5"),
        "wrong type": ("params:\n  train.seed: {choice: [one, two]}\n", "train.seed"),
        "loguniform at 0": ("params:\n  train.optim.lr_peak: {loguniform: [0, 1]}\n", "low > 0"),
        "dangling tie": ("params:\n  model.audio.drop_rate: {same_as: model.video.drop_rate}\n",
                         "same_as"),
        "test metric": ("metric: loss_total\nparams:\n  train.seed: {grid: [1]}\n", "held-out"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text)
        with pytest.raises(SpaceError, match=None) as caught:
            check_space(load_space(path), base)
        assert expected in str(caught.value) and path.name in str(caught.value), (name, caught.value)
    # through the CLI: exit code 2, the message, and no Ray started, no output folder written
    path = tmp_path / "unknown_key.yaml"
    done = subprocess.run([*vatt_command(), "sweep", str(path), "--out", str(tmp_path / "out")],
                          env=_env(), text=True, capture_output=True, timeout=120)
    assert done.returncode == 2 and "dropp_rate" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
    assert "Ray" not in done.stderr


def test_the_default_space_is_the_papers_question():
    from vatt_tuning.space import load_space

    space = load_space("droptoken_sharing")
    assert space.params["model.video.drop_rate"] == ("grid", [0.0, 0.5, 0.25, 0.75])
    assert space.tied == {"model.audio.drop_rate": "model.video.drop_rate"}
    assert space.params["model.sharing"] == ("grid", ["specific", "agnostic"])
    assert space.grid_size() == 8 and space.metric == "val_MRR"


def test_trial_rows_make_the_table_the_plot_and_a_best_yaml_that_loads(tmp_path):
    """vatt_tuning.results on rows as Tune's results give them (no Ray): a stopped-early trial is
    never the best while a finished one reported the metric; best.yaml is the whole config."""
    from vatt_tuning.results import best_yaml, markdown_table, select_best, trial_row, tradeoff_png
    from vatt_tuning.space import load_space
    from vatt.config import from_dict, load_config

    space = load_space("droptoken_sharing")
    base = load_config("tiny", ["train.optim.total_steps=4"])
    history = [{"clips_per_s": 10.0}, {"clips_per_s": 20.0}, {"clips_per_s": 30.0}]
    rows = [trial_row(space, base, config, last, trial_history, error)
            for config, last, trial_history, error in [
                ({"model.video.drop_rate": 0.5, "model.sharing": "specific"},
                 {"trial_id": "a", "step": 4, "val_MRR": 0.30}, history, None),
                ({"model.video.drop_rate": 0.0, "model.sharing": "agnostic"},
                 {"trial_id": "b", "step": 2, "val_MRR": 0.90}, history[:2], None),
                ({"model.video.drop_rate": 0.25, "model.sharing": "specific"},
                 {"trial_id": "c", "step": 1}, [], "RuntimeError: worker died\n")]]
    assert [r["status"] for r in rows] == ["finished", "stopped early at step 2",
                                           "failed: RuntimeError: worker died"]
    assert rows[0]["model.audio.drop_rate"] == 0.5  # same_as follows its key
    assert rows[0]["step_s"] == pytest.approx(base.train.global_batch_size / 25.0)
    best = select_best(rows, space.metric, space.mode)
    assert best is rows[0]  # finished beats a higher score stopped early
    assert "**(best)**" in markdown_table(rows, best).splitlines()[2]
    assert tradeoff_png(space, rows)[:8] == b"\x89PNG\r\n\x1a\n"
    text = best_yaml(space, base, best)
    assert text.startswith("# the best trial of sweep droptoken_sharing.yaml (a)")
    cfg = from_dict(yaml.safe_load(text))
    assert cfg.model.video.drop_rate == cfg.model.audio.drop_rate == 0.5
    assert cfg.train.optim.total_steps == 4


def test_a_space_over_seeds_reports_each_configuration_with_its_noise(tmp_path):
    """vatt_tuning.results on trials as Tune gives them (no Ray), for the space that repeats
    the deciding points over 3 seeds: one row per configuration with each seed's value, mean and
    std; the pooled noise and the difference it takes to tell two configurations apart; the
    best configuration by its mean, not by its luckiest seed; both plots drawn."""
    from vatt_tuning.results import (CURVES_PNG, RESULTS_MD, TRADEOFF_PNG, config_rows,
                                     seed_noise, trial_row, write_results)
    from vatt_tuning.space import load_space
    from vatt.config import load_config

    space = load_space("droptoken_sharing_seeds")
    assert space.grid_size() == 12 and space.scheduler == {"type": "fifo"}
    base = load_config("tiny", ["train.optim.total_steps=20"])
    scores = {(0.0, "specific"): [0.40, 0.36, 0.38], (0.5, "specific"): [0.45, 0.30, 0.33],
              (0.0, "agnostic"): [0.20, 0.24, 0.22], (0.5, "agnostic"): [0.11, 0.12, 0.10]}
    trials = []
    for (drop, sharing), values in scores.items():
        for seed, value in enumerate(values):
            history = [{"step": step, "clips_per_s": 30.0 / (1 + drop), "val_MRR": value * step / 20,
                        "loss_video_audio": 4.2 - step / 20, "loss_video_text": 4.1 - step / 40}
                       for step in (10, 20)]
            config = {"model.video.drop_rate": drop, "model.sharing": sharing, "train.seed": seed}
            last = history[-1] | {"trial_id": f"{sharing}-{drop}-{seed}"}
            trials.append((trial_row(space, base, config, last, history, None), history))
    summary = config_rows(space, [row for row, _ in trials], "val_MRR")
    by = {(r["model.video.drop_rate"], r["model.sharing"]): r for r in summary}
    assert by[(0.0, "specific")]["val_MRR mean"] == pytest.approx(0.38)
    assert by[(0.0, "specific")]["val_MRR std"] == pytest.approx(0.02)
    assert by[(0.0, "specific")]["val_MRR per seed"] == "0.400 (0) / 0.360 (1) / 0.380 (2)"
    assert by[(0.5, "agnostic")]["finished"] == "3 of 3" and by[(0.5, "agnostic")]["seeds"] == 3
    pooled, seeds = seed_noise(summary, "val_MRR")
    assert seeds == 3 and pooled == pytest.approx(
        (sum(by[key]["val_MRR std"] ** 2 for key in by) / 4) ** 0.5)

    rows, best, files = write_results(tmp_path, space, base, trials)
    # the luckiest trial (0.45, drop 0.5, seed 0) is not the best: its configuration's mean is
    # 0.36 against drop 0's 0.38; the best is drop 0's best seed
    assert (best["model.video.drop_rate"], best["model.sharing"], best["train.seed"]) == (
        0.0, "specific", 0)
    report = files[RESULTS_MD].read_text()
    assert "## Per configuration, over its seeds" in report
    assert f"pooled standard deviation of `val_MRR` within a configuration {pooled:.3f}" in report
    assert f"{2 * pooled * (2 / 3) ** 0.5:.3f}" in report
    for name in (TRADEOFF_PNG, CURVES_PNG):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best_cfg = yaml.safe_load(files["best.yaml"].read_text())
    assert best_cfg["train"]["seed"] == 0 and best_cfg["model"]["video"]["drop_rate"] == 0.0


def test_trials_fit_the_cluster_validate_and_keep_their_own_run():
    """The driver's arithmetic (no Ray): how many trials fit, the validation every trial
    reports for the scheduler, each trial's own run name and folder, its label."""
    from vatt_tuning.space import load_space
    from vatt_tuning.sweep import max_concurrent_trials, sweep_base, trial_config, trial_label
    from vatt.config import load_config, to_dict

    cfg = load_config("tiny")  # 2 workers x 0.5 CPU, + 1 CPU for the trial's data
    assert [max_concurrent_trials(cfg, {"CPU": cpus}) for cpus in (1, 2, 4, 9)] == [1, 1, 2, 4]
    gpu = load_config("tiny", ["train.use_gpu=true", "train.gpus_per_worker=1"])
    assert max_concurrent_trials(gpu, {"CPU": 16, "GPU": 4}) == 2  # 2 GPUs a trial
    base = sweep_base(cfg)  # 300 steps, rows every 10: validation every 30 steps
    assert base.train.validation.every == 30
    assert sweep_base(load_config("tiny", ["train.validation.every=7"])).train.validation.every == 7
    trial = trial_config(to_dict(base), {"model.sharing": "agnostic"}, "trial-1", "/s/runs")
    assert (trial.model.sharing.value, trial.train.run_name, trial.train.storage_path) == (
        "agnostic", "trial-1", "/s/runs")
    space = load_space("droptoken_sharing")
    assert trial_label(space, {"model.video.drop_rate": 0.25, "model.sharing": "specific"}) == (
        "drop_rate=0.25 sharing=specific")


def test_the_cluster_is_counted_at_the_most_its_autoscaler_may_grow_it_to():
    """The preflight's and the concurrency's arithmetic on resource dicts as Ray reports them
    (no Ray): ray.cluster_resources(), the head node's, and the worker groups' maximum that
    Ray reads from the autoscaler's cluster config (tests/test_sweep_cluster.py plays it)."""
    from vatt_tuning.sweep import max_concurrent_trials
    from vatt.config import load_config
    from vatt.train.preflight import ClusterCapacity, PreflightError, check_resources

    cfg = load_config("tiny")  # a trial: 2 workers x 0.5 CPU + 1 CPU for its data
    idle = ClusterCapacity.from_reports(now={"CPU": 0.0, "memory": 16e9},
                                        head={"CPU": 0.0, "memory": 16e9},
                                        node_groups_max={"CPU": 32, "memory": 128e9})
    assert idle.autoscaled and idle.now["CPU"] == 0 and idle.maximum["CPU"] == 32
    check_resources(cfg, idle.maximum, "here")  # fits the maximum, though nothing is up
    assert max_concurrent_trials(cfg, idle.maximum) == 16  # pending trials are the demand
    assert "(0 CPUs up now, at most 32 CPUs once its autoscaler" in idle.describe("the cluster")
    # a head with CPUs of its own and one worker up: the head counts beside the worker groups
    grown = ClusterCapacity.from_reports(now={"CPU": 12.0}, head={"CPU": 4.0},
                                         node_groups_max={"CPU": 32, "GPU": 4})
    assert (grown.maximum["CPU"], grown.maximum["GPU"]) == (36, 4)
    too_big = load_config("tiny", ["train.num_workers=80"])
    with pytest.raises(PreflightError, match=r"= 40 CPUs, but the cluster \(12 CPUs up now, at "
                                             r"most 36 CPUs and 4 GPUs once"):
        check_resources(too_big, grown.maximum, grown.describe("the cluster"))
    # no autoscaler reported a maximum (one machine, a fixed cluster): what is up is all there is
    local = ClusterCapacity.from_reports(now={"CPU": 2.0}, head={"CPU": 2.0}, node_groups_max=None)
    assert not local.autoscaled and local.maximum == {"CPU": 2.0}
    assert max_concurrent_trials(cfg, local.maximum) == 1
    assert "no autoscaler reported a maximum" in local.describe("the local Ray")


def test_a_sweep_refused_by_its_preflight_writes_nothing_to_its_out(tmp_path):
    """On the local Ray: a trial that cannot fit is refused before anything is written to
    --out, so a corrected command starts a new sweep there instead of being refused as 'a
    sweep started with other arguments' (tests/test_sweep_cluster.py runs the corrected one)."""
    import psutil

    space = tmp_path / "grid.yaml"
    space.write_text("params:\n  model.sharing: {grid: [specific]}\n")
    workers = psutil.cpu_count() * 2 + 2  # x 0.5 CPU each: more than this machine has
    done = subprocess.run([*vatt_command(), "sweep", str(space), "--out", str(tmp_path / "out"),
                           f"train.num_workers={workers}", f"train.global_batch_size={workers}"],
                          cwd=tmp_path, env=_env(), text=True, capture_output=True, timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"train.num_workers={workers}" in done.stderr and "Nothing was written" in done.stderr
    assert "no autoscaler reported a maximum" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()

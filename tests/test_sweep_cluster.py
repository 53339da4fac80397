"""`vatt sweep` on an existing Ray cluster that autoscales, with the sweep in object storage.

The cluster is the sweep RayCluster of k8s/raycluster as it starts on Kubernetes, on this
machine: `ray start --head --num-cpus=0` (the head's rayStartParams), no worker node, and
SeaweedFS as the object store; every Ray node has the store's keys in its environment, as the
pods have the `vatt-object-store` Secret. A user's command runs against it: `vatt sweep
tuning/cluster_grid.yaml --out s3://vatt-data/sweeps/... <overrides>` with RAY_ADDRESS at the
head, which is what a RayJob with `clusterSelector` (or `ray job submit`) runs on the head.

The autoscaler is played: no KubeRay operator runs here to add pods. Ray's autoscaler v2 reports
its cluster config to the GCS (`GcsClient.report_cluster_config`, a serialized
`autoscaler_pb2.ClusterConfig`: its worker groups with their resources and maxReplicas, the head
left out), which Ray Train and Ray Data read with
`ray._private.state.state.get_max_resources_from_cluster_config()`. The test makes that same call
with the message built as the autoscaler builds it: k8s/raycluster/raycluster.yaml through
Ray's own KubeRay config reader (`_derive_autoscaling_config_from_ray_cr`, what the autoscaler
sidecar runs on the RayCluster), its worker group set to this machine's size (2 CPUs, at most
1 node), then converted node group by node group as the autoscaler's
`_autoscaling_config_to_cluster_config` does. (Ray 2.60's own autoscaler does not yet make this
report; newer ones do, on start and on every change.) Then, once the sweep has started and
waits, the test plays the node the autoscaler would add: `ray start --address=<head>
--num-cpus=2` with a temp folder of its own.

The module shows, in one sequence (about 3 minutes here): a sweep that cannot fit the maximum
is refused with its reason and writes nothing; the corrected command starts while the head
alone has 0 CPUs; its trials train on the worker node; its state and results are in SeaweedFS;
killed and run again from another folder with the local copy removed, it resumes from
SeaweedFS without running its finished trial again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT, S3Server, _free_ports, poll, stop_process_group, vatt_command

pytestmark = pytest.mark.slow

SPACE = """\
metric: val_MRR
scheduler: {type: fifo}
params:
  model.sharing: {grid: [specific, agnostic]}
"""
SPACE_FILE = Path("tuning") / "cluster_grid.yaml"
FAST = ["train.optim.total_steps=4", "train.optim.warmup_steps=1", "train.log_every=2",
        "train.checkpoint_every=2", "train.validation.num_windows=1"]
WORKER_CPUS = 2  # the played worker group: nodes of 2 CPUs, at most 1 of them


class RayNodes:
    """`ray start --block` processes on 127.0.0.1, each with its own temp folder and worker
    ports (two Ray nodes on one machine collide otherwise)."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.procs = root, env, []
        self.ray = str(Path(sys.executable).parent / "ray")
        self.gcs_port = _free_ports(1)[0]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self._worker_ports = random.randrange(30000, 38000, 400)

    def start(self, name: str, *args: str) -> Path:
        temp = self.root / name
        temp.mkdir(parents=True)
        low, self._worker_ports = self._worker_ports, self._worker_ports + 200
        log = temp / "ray-start.log"
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen(
                [self.ray, "start", "--block", "--disable-usage-stats",
                 "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
                 f"--min-worker-port={low}", f"--max-worker-port={low + 199}", *args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        return temp

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process_group(proc, grace_s=10)


def _keys(s3: S3Server, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket,
                                                                   Prefix=f"{prefix}/")
    return sorted(obj["Key"][len(prefix) + 1:] for page in pages for obj in page.get("Contents", []))


def _ray_actor_logs(temp: Path, actor: str) -> list[Path]:
    """The worker logs of a Ray node's session that ran an actor of class `actor` (Ray writes
    ':actor_name:<class>' into the log of each actor's process)."""
    return [path for path in temp.glob("session_*/logs/worker-*.out")
            if f":actor_name:{actor}" in path.read_text(errors="replace")]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A small generated dataset, ingested (the `tiny` preset's datasets, 5% of the default)."""
    from vatt.config import load_config
    from vatt.data.ingest import ingest

    folder = tmp_path_factory.mktemp("sweep-cluster-data")
    cfg = load_config("tiny", ["data.ingest.synthetic_scale=0.05", "data.ingest.num_workers=1"])
    ingest(cfg, "synthetic", str(folder / "raw"), folder / "data", progress=False)
    return folder / "data"


def _project(root: Path) -> Path:
    """A folder as a user keeps one: the space under tuning/."""
    (root / SPACE_FILE).parent.mkdir(parents=True)
    (root / SPACE_FILE).write_text(SPACE)
    return root


@pytest.fixture(scope="module")
def swept(tmp_path_factory, s3_server: S3Server, data: Path):
    root = tmp_path_factory.mktemp("sweep-cluster")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "PREFECT_", "AWS_"))}
    env.update(s3_server.env)  # every Ray node has the store's keys, as the pods have the Secret
    # token authentication, as the RayCluster's authOptions: every node and client has the token
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(24))
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's
    nodes = RayNodes(Path(tempfile.mkdtemp(prefix="vsr", dir="/tmp")), env)
    prefix = f"sweeps/cluster-{secrets.token_hex(4)}"
    out = f"s3://{s3_server.bucket}/{prefix}"
    command = [*vatt_command(), "sweep", str(SPACE_FILE), "--out", out, *FAST,
               f"data.path={data}"]
    user_env = {**env, "RAY_ADDRESS": nodes.address}
    local_copy = Path(tempfile.gettempdir()) / "vatt-sweeps" / s3_server.bucket / prefix
    try:
        head_temp = nodes.start("head", "--head", f"--port={nodes.gcs_port}", "--num-cpus=0",
                                "--include-dashboard=false")
        played = subprocess.run(
            [sys.executable, str(REPO_ROOT / "tests" / "autoscaler_play.py"), "--address",
             nodes.address, "--ray-cluster", str(REPO_ROOT / "k8s" / "raycluster" /
                                                  "raycluster.yaml"),
             f"--worker-cpus={WORKER_CPUS}", "--max-workers=1"],
            env=env, text=True, capture_output=True, timeout=120)
        assert played.returncode == 0, played.stderr[-3000:]
        autoscaler = json.loads(played.stdout.strip().splitlines()[-1])

        # a sweep whose trial cannot fit the maximum: refused before anything is written
        first_folder = _project(root / "first")
        refused = subprocess.run([*command, "train.num_workers=8"], cwd=first_folder,
                                 env=user_env, text=True, capture_output=True, timeout=300)
        refused_keys = _keys(s3_server, prefix)

        # the corrected command, started while the head alone is up (0 CPUs)
        first_log = root / "sweep-first.log"
        with open(first_log, "w") as log:
            first = subprocess.Popen(command, cwd=first_folder, env=user_env, stdout=log,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        poll(lambda: "sweep of cluster_grid.yaml" in first_log.read_text(),
             "the sweep to pass its preflight and start", 180, first, first_log)
        # the autoscaler, played: the node it adds for the pending trial
        worker_temp = nodes.start("worker", f"--address={nodes.address}",
                                  f"--num-cpus={WORKER_CPUS}")
        poll(lambda: "trial 1/2" in first_log.read_text() and " finished: " in first_log.read_text(),
             "the first trial to finish", 300, first, first_log)
        finished_before = [line for line in first_log.read_text().splitlines()
                           if " finished: " in line]

        def finished_trial_on_record() -> bool:
            """Tune's newest experiment state in SeaweedFS has the finished trial (its uploads
            run behind the trials: one under way when the trial finished may hold older state)."""
            states = [key for key in _keys(s3_server, prefix)
                      if key.startswith("tune/experiment_state-")]
            if not states:
                return False
            newest = s3_server.client().get_object(Bucket=s3_server.bucket,
                                                   Key=f"{prefix}/{max(states)}")
            return "TERMINATED" in newest["Body"].read().decode()

        poll(finished_trial_on_record, "Tune to save the finished trial in SeaweedFS", 60, first,
             first_log)
        os.killpg(first.pid, signal.SIGKILL)  # the sweep's driver; the cluster stays up
        first.wait(timeout=60)

        # the same command from another folder, with the local copy of the first run gone
        shutil.rmtree(local_copy)
        second = subprocess.run(command, cwd=_project(root / "second"), env=user_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        yield {"refused": refused, "refused_keys": refused_keys, "autoscaler": autoscaler,
               "first": first_log.read_text(), "second": second, "keys": _keys(s3_server, prefix),
               "finished_before": finished_before, "s3": s3_server, "prefix": prefix,
               "head_temp": head_temp, "worker_temp": worker_temp}
    finally:
        nodes.stop()
        shutil.rmtree(nodes.root, ignore_errors=True)
        shutil.rmtree(local_copy, ignore_errors=True)


def test_a_sweep_that_cannot_fit_the_maximum_is_refused_and_leaves_nothing(swept):
    refused = swept["refused"]
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    message = refused.stderr
    assert "train.num_workers=8" in message and "= 4 CPUs" in message, message
    assert "at most 2 CPUs once its autoscaler has added the nodes it may" in message, message
    assert "maxReplicas" in message and "Nothing was written" in message, message
    assert swept["refused_keys"] == []


def test_the_preflight_counts_what_the_autoscaler_may_add(swept):
    """The head alone had no CPU when the sweep started; it planned with the maximum."""
    assert swept["autoscaler"]["live_node_cpus"] == [0.0]  # the head, and nothing else
    assert swept["autoscaler"]["maximum"]["CPU"] == 2  # as Ray Train reads it back
    first = swept["first"]
    assert ("up to 1 at a time on 127.0.0.1:" in first
            and "(0 CPUs up now, at most 2 CPUs once its autoscaler has added the nodes it may)"
            in first), first[-3000:]


def test_trials_train_on_the_worker_node(swept):
    assert _ray_actor_logs(swept["worker_temp"], "RayTrainWorker")
    assert _ray_actor_logs(swept["head_temp"], "RayTrainWorker") == []


def test_the_sweep_lives_in_object_storage_and_resumes_from_it(swept):
    second = swept["second"]
    assert second.returncode == 0, second.stdout[-6000:]
    assert "resuming the sweep in s3://" in second.stdout
    assert "1 of 2 trial(s) finished and are not run again" in second.stdout, second.stdout[-3000:]
    done_first = {line.split("[", 1)[1].split("]", 1)[0] for line in swept["finished_before"]}
    reported_again = {line.split("[", 1)[1].split("]", 1)[0] for line in second.stdout.splitlines()
                      if line.startswith("trial ") and " step " in line}
    assert done_first and not done_first & reported_again, (done_first, reported_again)

    keys = swept["keys"]
    assert {"sweep.json", "results.csv", "results.md", "tradeoff.png", "best.yaml"} <= set(keys)
    assert any(key.startswith("tune/experiment_state-") for key in keys), keys
    trial_runs = {key.split("/")[1] for key in keys if key.startswith("runs/trial-")}
    assert len(trial_runs) == 2 and all(
        any(key.startswith(f"runs/{run}/checkpoint_") for key in keys) for run in trial_runs), keys
    s3, prefix = swept["s3"], swept["prefix"]
    table = s3.client().get_object(Bucket=s3.bucket, Key=f"{prefix}/results.csv")["Body"].read()
    rows = list(csv.DictReader(io.StringIO(table.decode())))
    assert sorted(row["model.sharing"] for row in rows) == ["agnostic", "specific"]
    assert all(row["status"] == "finished" and 0 < float(row["val_MRR"]) <= 1 for row in rows)
    assert f"results.csv: s3://{s3.bucket}/{prefix}/results.csv" in second.stdout

"""A run's RayJob, rendered from the project's kustomize manifests (`k8s/`).

`kubectl kustomize <cluster.manifests>/overlays/<cluster.accelerator>` gives the declarative part
(image, Ray head and worker groups, accelerators, object-store settings, security context); this
module sets what belongs to one run:

- the RayJob's name, derived from `train.run_name` (so submitting the same run name again finds
  the same RayJob, and the entrypoint resumes the same Ray Train run from its checkpoint);
- the namespace of every object;
- the entrypoint, `vatt pretrain --config-env VATT_JOB_CONFIG` (or, for the evaluation of a
  trained checkpoint beside its training, `vatt evaluate --config-env VATT_JOB_CONFIG
  --checkpoint ... --outcome ... --on-worker`), and the config itself, as YAML in that
  environment variable of the job's `runtimeEnvYAML`: the config travels inside the RayJob, so
  what runs is exactly what was submitted, with no file to mount or copy.

The overlay's own entrypoint says what its hardware needs (`train.use_gpu=true
train.num_workers=2` beside 2 one-GPU worker pods; the TPU slice's topology and hosts): those
KEY=VALUE settings are applied to the run's config before it is shipped, so the config and the
pods it runs on agree. They are edited in the overlay, next to the pods they describe.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace as dc_replace
from pathlib import Path
from typing import Any

import yaml

from vatt.config import Config, ConfigError, TrainingTarget, replace, to_yaml

JOB_CONFIG_ENV = "VATT_JOB_CONFIG"  # the runtime-env variable holding the run's config YAML
RUN_NAME_LABEL = "vatt.dev/run-name"  # the RayJob's own name (attach checks it)
STEP_LABEL = "vatt.dev/step"  # pretrain or evaluate
EVALUATE_SUFFIX = "-eval"  # the evaluation RayJob of run R is named after "R-eval"
# KubeRay names the RayJob's RayCluster "<rayjob>-<5 chars>" and its pods after that: a RayJob
# name longer than 47 characters is refused by the operator
MAX_JOB_NAME = 47
RAY_KINDS = ("RayJob", "RayCluster")
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                        "CustomResourceDefinition", "PersistentVolume", "StorageClass"}


class RenderError(ValueError):
    """The manifests or the config cannot make a RayJob; the message says what to change."""


@dataclass(frozen=True)
class RenderedJob:
    name: str  # the RayJob's metadata.name
    namespace: str
    run_name: str  # train.run_name inside the shipped config
    documents: list[dict[str, Any]]  # every object to create, the RayJob among them
    config: Config  # what the job runs: the run's config with the overlay's hardware settings
    hardware: tuple[str, ...] = ()  # those settings (KEY=VALUE from the overlay's entrypoint)

    @property
    def rayjob(self) -> dict[str, Any]:
        return next(doc for doc in self.documents if doc.get("kind") == "RayJob")

    def to_yaml(self) -> str:
        """Multi-document YAML, as `kubectl apply -f -` reads it."""
        return yaml.safe_dump_all(self.documents, sort_keys=False)


def job_name(run_name: str) -> str:
    """A DNS-1123 name of at most 47 characters for a run: the run name lower-cased with other
    characters as '-', shortened with a hash of the whole name when too long (so two long run
    names that share a prefix still get different RayJobs)."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-") or "run"
    if not name[0].isalpha():
        name = f"vatt-{name}"
    if len(name) > MAX_JOB_NAME:
        digest = hashlib.sha256(run_name.encode()).hexdigest()[:8]
        name = f"{name[:MAX_JOB_NAME - 9].rstrip('-')}-{digest}"
    return name


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` renders."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError(
            "kubectl is not on PATH: the RayJob is rendered from k8s/ with `kubectl kustomize` "
            "(kubectl 1.14 or newer has kustomize built in); install kubectl")
    if not (folder / "kustomization.yaml").is_file():
        raise RenderError(
            f"{folder} has no kustomization.yaml: cluster.manifests must name the project's k8s/ "
            "folder (run from the project folder, or set cluster.manifests=/path/to/k8s), and "
            "cluster.accelerator one of its overlays")
    done = subprocess.run([kubectl, "kustomize", str(folder)], text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RenderError(f"`kubectl kustomize {folder}` failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def job_config(cfg: Config) -> Config:
    """The config shipped with the job: it trains on the cluster's own Ray (the entrypoint runs
    on the RayJob's head), so its own target is local there."""
    return dc_replace(cfg, cluster=dc_replace(cfg.cluster, target=TrainingTarget.local))


def check_cluster_paths(cfg: Config, step: str = "pretrain") -> None:
    """Pods cannot read or write this machine's folders: the data and the run folder must be in
    object storage, and for an evaluation also the reports and the registry."""
    keys = {"train.storage_path": cfg.train.storage_path, "data.path": cfg.data.path}
    if step == "evaluate":
        keys.update({"eval.output_path": cfg.eval.output_path,
                     "eval.registry_path": cfg.eval.registry_path})
    local = [f"{key}='{value}'" for key, value in keys.items() if not value.startswith("s3://")]
    if local:
        raise RenderError(
            f"{', '.join(local)}: a RayJob's pods cannot see this machine's folders; put them in "
            "object storage, e.g. train.storage_path=s3://BUCKET/runs, and data.versions_uri="
            "s3://BUCKET/datasets so the data folder is published there first (the pods get "
            "the endpoint and keys from the vatt-object-store ConfigMap and Secret)")


def render_job(cfg: Config, manifests: str | Path | None = None,
               command: Sequence[str] = ("pretrain",), suffix: str = "") -> RenderedJob:
    """The objects to create for running `vatt <command> --config-env VATT_JOB_CONFIG` with
    `cfg` on the cluster: pretraining by default; `command` ("evaluate", "--checkpoint", ...)
    with `suffix` "-eval" for the evaluation of a run. train.run_name must be set: the RayJob
    is named after it (plus `suffix`)."""
    if not cfg.train.run_name:
        raise RenderError("train.run_name is not set: the RayJob and the resumable Ray Train run "
                          "are named after it")
    step = command[0] if command else "pretrain"
    check_cluster_paths(cfg, step)
    folder = Path(manifests or cfg.cluster.manifests) / "overlays" / cfg.cluster.accelerator.value
    documents = kustomize(folder)
    rayjobs = [doc for doc in documents if doc.get("kind") == "RayJob"]
    if len(rayjobs) != 1:
        raise RenderError(f"`kubectl kustomize {folder}` rendered {len(rayjobs)} RayJobs; the "
                          "overlay must render exactly one (k8s/base/rayjob.yaml)")
    hardware = tuple(token for token in shlex.split(rayjobs[0]["spec"].get("entrypoint", ""))
                     if "=" in token and not token.startswith("-"))
    try:
        cfg = replace(cfg, list(hardware))
    except ConfigError as err:
        raise RenderError(f"the entrypoint of {folder} sets {' '.join(hardware)}: {err}") from None
    name, namespace = job_name(cfg.train.run_name + suffix), cfg.cluster.namespace
    for doc in documents:
        if doc.get("kind") not in CLUSTER_SCOPED_KINDS:
            doc.setdefault("metadata", {})["namespace"] = namespace
    rayjob = rayjobs[0]
    rayjob["metadata"]["name"] = name
    labels = rayjob["metadata"].setdefault("labels", {})
    labels[RUN_NAME_LABEL] = name  # label values are DNS-1123-like and at most 63 characters
    labels[STEP_LABEL] = step
    spec = rayjob["spec"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars[JOB_CONFIG_ENV] = to_yaml(job_config(cfg))
    runtime_env["env_vars"] = env_vars
    spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=False)
    head, *rest = command
    spec["entrypoint"] = shlex.join(["vatt", head, "--config-env", JOB_CONFIG_ENV, *rest])
    return RenderedJob(name=name, namespace=namespace, run_name=cfg.train.run_name,
                       documents=documents, config=cfg, hardware=hardware)


__all__ = ["JOB_CONFIG_ENV", "RUN_NAME_LABEL", "STEP_LABEL", "EVALUATE_SUFFIX", "RenderError",
           "RenderedJob", "job_name", "kustomize", "render_job", "check_cluster_paths"]

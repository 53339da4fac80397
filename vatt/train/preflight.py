"""Checks that fail a pretraining run before any worker starts, saying what to change.

`check_config` needs nothing but the config; `check_storage` touches the storage path (a probe
file written and removed); `check_resources` needs a connected Ray and compares what the run asks
for with what the cluster has. `cluster_capacity` says what that is on a cluster that autoscales:
the most it may grow to, as its autoscaler reports it (see there).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from vatt.config import Config, ConfigError

log = logging.getLogger(__name__)


class PreflightError(ConfigError):
    """A run that cannot start as configured; the message names the key to change."""


def check_config(cfg: Config) -> None:
    train = cfg.train
    positive = {"train.num_workers": train.num_workers, "train.grad_accum": train.grad_accum,
                "train.checkpoint_every": train.checkpoint_every, "train.log_every": train.log_every,
                "train.keep_checkpoints": train.keep_checkpoints,
                "train.optim.total_steps": train.optim.total_steps,
                "train.global_batch_size": train.global_batch_size}
    for key, value in positive.items():
        if value < 1:
            raise PreflightError(f"{key}={value} must be at least 1")
    if train.cpus_per_worker < 0 or (train.use_gpu and train.gpus_per_worker <= 0):
        raise PreflightError(
            f"train.cpus_per_worker={train.cpus_per_worker} must be >= 0 and "
            f"train.gpus_per_worker={train.gpus_per_worker} > 0 when train.use_gpu=true"
        )
    if train.max_failures < -1:
        raise PreflightError(f"train.max_failures={train.max_failures}: use -1 (retry forever), "
                             "0 (never) or a positive count")
    if not train.poll_interval_s > 0:
        raise PreflightError(f"train.poll_interval_s={train.poll_interval_s} must be > 0 seconds "
                             "(Ray's own default is 2)")
    if train.read_ahead_batches < 0:
        raise PreflightError(f"train.read_ahead_batches={train.read_ahead_batches} must be >= 0 "
                             "(0 reads in the training thread)")
    if train.optim.warmup_steps < 0:
        raise PreflightError(f"train.optim.warmup_steps={train.optim.warmup_steps} must be >= 0")
    parts = train.num_workers * train.grad_accum
    if train.global_batch_size % parts:
        raise PreflightError(
            f"train.global_batch_size={train.global_batch_size} does not split evenly over "
            f"train.num_workers={train.num_workers} x train.grad_accum={train.grad_accum}; "
            f"use a multiple of {parts}"
        )


def check_storage(filesystem: Any, path: str, shown_as: str) -> None:
    """Create the run's parent folder and write/delete a probe file there (pyarrow filesystem)."""
    probe = f"{path.rstrip('/')}/.vatt-preflight-{uuid.uuid4().hex}"
    try:
        filesystem.create_dir(path, recursive=True)
        with filesystem.open_output_stream(probe) as stream:
            stream.write(b"ok")
        filesystem.delete_file(probe)
    except Exception as err:  # pyarrow raises OSError subclasses and botocore-style errors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PreflightError(
            f"train.storage_path='{shown_as}' is not writable ({type(err).__name__}: {first}). "
            "Point train.storage_path at a writable folder or s3://bucket/prefix; for s3:// set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the endpoint (AWS_ENDPOINT_URL) of the "
            "object store, and make sure the bucket exists"
        ) from None


def check_resources(cfg: Config, cluster: dict[str, float], where: Optional[str] = None) -> None:
    """`cluster` is `ray.cluster_resources()` of the cluster the run will use."""
    train = cfg.train
    where = where or "this Ray cluster"
    cpus = cluster.get("CPU", 0.0)
    need_cpus = train.num_workers * train.cpus_per_worker
    if need_cpus > cpus:
        raise PreflightError(
            f"train.num_workers={train.num_workers} x train.cpus_per_worker={train.cpus_per_worker} "
            f"= {need_cpus:g} CPUs, but {where} has {cpus:g}; lower train.num_workers or "
            "train.cpus_per_worker (fractions such as 0.5 are allowed)"
        )
    if train.use_tpu:
        tpus, need_tpus = cluster.get("TPU", 0.0), train.num_workers * train.tpus_per_worker
        if need_tpus > tpus:
            raise PreflightError(
                f"train.use_tpu=true: train.num_workers={train.num_workers} x "
                f"train.tpus_per_worker={train.tpus_per_worker} = {need_tpus:g} TPU chips, but "
                f"{where} has {tpus:g}; run on a TPU slice (k8s/overlays/tpu) or lower them")
    if train.use_gpu:
        gpus = cluster.get("GPU", 0.0)
        need_gpus = train.num_workers * train.gpus_per_worker
        if gpus == 0:
            raise PreflightError(
                f"train.use_gpu=true but {where} has no GPU; set train.use_gpu=false to train on "
                "CPU, or run on a GPU node (RAY_ADDRESS of a cluster with GPUs)"
            )
        if need_gpus > gpus:
            raise PreflightError(
                f"train.num_workers={train.num_workers} x train.gpus_per_worker="
                f"{train.gpus_per_worker} = {need_gpus:g} GPUs, but {where} has {gpus:g}; lower "
                "train.num_workers or train.gpus_per_worker"
            )


@dataclass(frozen=True)
class ClusterCapacity:
    """What a Ray cluster has up now and the most it may have once its autoscaler has added
    every node it may (`autoscaled`: the autoscaler reported that maximum; else it is `now`)."""

    now: dict[str, float]
    maximum: dict[str, float]
    autoscaled: bool

    @classmethod
    def from_reports(cls, now: dict[str, float], head: dict[str, float],
                     node_groups_max: Optional[dict[str, float]]) -> "ClusterCapacity":
        """`now`: ray.cluster_resources(); `head`: the head node's resources; `node_groups_max`:
        what Ray reads from the autoscaler's cluster config (its worker groups at their
        maxReplicas, the head left out), None when no autoscaler reported one."""
        if not node_groups_max:
            return cls(dict(now), dict(now), False)
        keys = set(now) | set(head) | set(node_groups_max)
        maximum = {key: max(now.get(key, 0.0), head.get(key, 0.0) + node_groups_max.get(key, 0.0))
                   for key in keys}
        return cls(dict(now), maximum, True)

    def describe(self, where: str) -> str:
        """`where` with what it has: 'the Ray cluster at X (0 CPUs up now, at most 8 once its
        autoscaler has added the nodes it may)'."""
        cpus_now, cpus_max = self.now.get("CPU", 0.0), self.maximum.get("CPU", 0.0)
        if not self.autoscaled:
            return f"{where} ({cpus_now:g} CPUs; no autoscaler reported a maximum)"
        gpus = self.maximum.get("GPU", 0.0)
        gpu_text = f" and {gpus:g} GPUs" if gpus else ""
        return (f"{where} ({cpus_now:g} CPUs up now, at most {cpus_max:g} CPUs{gpu_text} once its "
                "autoscaler has added the nodes it may)")


def kuberay_node_groups_max(environ: Optional[Mapping[str, str]] = None
                            ) -> Optional[dict[str, float]]:
    """In a pod of an autoscaled KubeRay RayCluster, its worker groups at their maxReplicas,
    read from the RayCluster as Ray's autoscaler reads it (KubeRay sets RAY_CLUSTER_NAME and
    RAY_CLUSTER_NAMESPACE in every Ray container; the pod's service-account token, which the
    head of an autoscaled cluster has for its autoscaler sidecar, may get its RayCluster).
    None elsewhere: outside KubeRay, in a pod without a token (k8s/base's Ray pods), for a
    cluster without autoscaling, or when the RayCluster cannot be read (logged)."""
    environ = os.environ if environ is None else environ
    name, namespace = environ.get("RAY_CLUSTER_NAME"), environ.get("RAY_CLUSTER_NAMESPACE")
    if not (name and namespace):
        return None
    from ray.autoscaler._private.kuberay import node_provider
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr)

    if not os.path.exists(node_provider.IN_CLUSTER_TOKEN_PATH):
        return None  # no token in this pod: nothing it could read
    try:
        cluster = node_provider.KubernetesHttpApiClient(namespace).get(f"rayclusters/{name}")
        if not (cluster.get("spec") or {}).get("enableInTreeAutoscaling"):
            return None  # its workers stay at replicas: what is up is what there is
        config = _derive_autoscaling_config_from_ray_cr(cluster)
    except Exception as err:  # noqa: BLE001 - a hint for the preflight, never fatal
        log.warning("could not read RayCluster %s/%s for the size its autoscaler may grow it to "
                    "(%s: %s); counting what is up now", namespace, name, type(err).__name__,
                    err)
        return None
    maximum: dict[str, float] = {}
    for group, node_type in config["available_node_types"].items():
        if group == config["head_node_type"]:
            continue  # the head does not scale
        for key, value in node_type["resources"].items():
            maximum[key] = maximum.get(key, 0.0) + float(value) * node_type["max_workers"]
    return maximum


def cluster_capacity() -> ClusterCapacity:
    """The connected Ray cluster's capacity. The maximum is what Ray Train and Ray Data read
    (`ray._private.state.state.get_max_resources_from_cluster_config()`): the cluster config
    that Ray's autoscaler (v2, as KubeRay runs it) reports to the GCS, its worker groups times
    their maximum count. Ray 2.60's autoscaler does not report it yet: a driver in a pod of an
    autoscaled RayCluster (a sweep submitted to k8s/raycluster) reads the same numbers from the
    RayCluster (`kuberay_node_groups_max`). Else (a single machine, a cluster without
    autoscaler) the maximum is what is up now."""
    import ray
    from ray._private.state import state

    now = {key: float(value) for key, value in ray.cluster_resources().items()}
    head = next((node["Resources"] for node in ray.nodes() if node.get("Alive")
                 and "node:__internal_head__" in node.get("Resources", {})), {})
    node_groups_max = state.get_max_resources_from_cluster_config() or kuberay_node_groups_max()
    return ClusterCapacity.from_reports(now, head, node_groups_max)

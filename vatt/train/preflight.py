"""Checks that fail a pretraining run before any worker starts, saying what to change.

`check_config` needs nothing but the config; `check_storage` touches the storage path (a probe
file written and removed); `check_resources` needs a connected Ray and compares what the run asks
for with what the cluster has.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

from vatt.config import Config, ConfigError


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

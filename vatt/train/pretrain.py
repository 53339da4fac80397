"""Pretraining driver: config -> preflight -> Ray Data dataset -> TorchTrainer.fit() -> run folder.

    vatt pretrain --preset tiny train.run_name=exp1     # what a KubeRay RayJob runs too (vatt.cli)

Ray: with RAY_ADDRESS set (or a Ray already initialised in this process) the run goes to that
cluster; otherwise a local Ray is started for the run. The run folder is
`<train.storage_path>/<train.run_name>/`; running again with the same run name resumes from its
latest checkpoint. At the end the folder also holds `history.json` (every logged row),
`loss_curve.png` and `phases.json` (where the wall time went: start-up, steps, checkpoints,
shut-down; vatt.train.phases).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace as dc_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

# the run folder's history and vocabulary are written as a checkpoint's
from vatt.checkpoints import HISTORY_FILE as HISTORY_JSON, VOCAB_FILE as VOCAB_JSON, run_folder
from vatt.config import Config, to_dict, with_absolute_paths
from vatt.train.resume import read_history
from vatt.train.preflight import (PreflightError, check_config, check_resources, check_storage,
                                  cluster_capacity)

if TYPE_CHECKING:
    from vatt.train.precision import PrecisionChoice

LOSS_CURVE_PNG = "loss_curve.png"
PHASES_JSON = "phases.json"  # seconds per phase of the last attempt (vatt.train.phases)
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train's; train.poll_interval_s

log = logging.getLogger("vatt.train")


@dataclass
class Storage:
    """Where runs go: `uri` as the user wrote it; `path` and `filesystem` as pyarrow/Ray take them."""

    uri: str
    path: str
    filesystem: Any  # pyarrow.fs.FileSystem

    def run_uri(self, run_name: str) -> str:
        return run_folder(self.uri, run_name)

    def run_path(self, run_name: str) -> str:
        return run_folder(self.path, run_name)


def resolve_storage(cfg: Config) -> Storage:
    """`train.storage_path` as pyarrow sees it, after checking that the run can write there."""
    from vatt.storage import ObjectStore, StorageError, is_s3_uri

    uri = cfg.train.storage_path
    if "://" in uri and not is_s3_uri(uri):
        raise PreflightError(
            f"train.storage_path='{uri}': only local folders and s3://bucket/prefix are supported"
        )
    store = ObjectStore.from_config(cfg.storage)
    try:
        store.check_bucket(uri)
        filesystem, path = store.pyarrow_filesystem(uri)
    except StorageError as err:
        raise PreflightError(f"train.storage_path='{uri}' cannot be used: {err}") from None
    check_storage(filesystem, path, uri)
    return Storage(uri=uri.rstrip("/"), path=path, filesystem=filesystem)


def resolve(cfg: Config) -> Config:
    """Absolute local paths and a run name, so every worker reads the same thing."""
    # what the workers read and write; eval paths stay relative to where a later evaluation runs
    cfg = with_absolute_paths(cfg, fields=("data.path", "train.storage_path"))
    run_name = cfg.train.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dc_replace(cfg, train=dc_replace(cfg.train, run_name=run_name))


def data_version_of(cfg: Config) -> dict[str, Any]:
    """What data the run reads, saved with every checkpoint: the SHA-256 of the dataset's
    manifest (it lists every clip with the checksum of each member, so it identifies what was
    read) and, when data.path is the project's DVC-tracked data/ *and* matches data.dvc, the
    DVC version (the md5 in data.dvc); when data.path is a published data version
    (vatt.data.publish), that version (and as `md5` its DVC version when it was one). Otherwise
    `md5` is None and the record (and a warning) says why: not tracked, or data/ differs from
    data.dvc (stale after an untracked ingest)."""
    from vatt.data.loader import DataError, manifest_sha256
    from vatt.data.versioning import (DATA_DVC, VersioningError, data_version, find_repo_root,
                                      workspace_matches)

    record: dict[str, Any] = {"data_path": cfg.data.path, "dataset": cfg.train.dataset,
                              "split": cfg.train.dataset_split, "md5": None}
    try:
        record["manifest_sha256"] = manifest_sha256(cfg.data.path, cfg.train.dataset, cfg.storage)
    except DataError:
        record["manifest_sha256"] = None  # the loader says what is missing when it reads
    try:
        if "://" in cfg.data.path:
            from vatt.data.publish import read_published
            from vatt.storage import ObjectStore

            # a published version (vatt.data.publish): its record says which version it is
            published = read_published(cfg.data.path, ObjectStore.from_config(cfg.storage))
            if published is not None:
                record["published_version"] = published["version"]
                if published.get("kind") == "dvc":
                    record["md5"] = published["version"]
                return record
            raise VersioningError(f"data.path={cfg.data.path} is neither a local DVC-tracked "
                                  "folder nor a published data version (vatt data publish)")
        root = find_repo_root(Path(cfg.data.path).parent)
        if Path(cfg.data.path).resolve() != (root / "data").resolve():
            raise VersioningError(f"data.path={cfg.data.path} is not the data/ folder that "
                                  f"{root / DATA_DVC} tracks")
        version = data_version(root)
        if not workspace_matches(root):
            record["data_dvc_md5"] = version
            raise VersioningError(f"{root / 'data'} differs from {root / DATA_DVC} (version "
                                  f"{version}): it was changed (e.g. ingested with --no-version) "
                                  "without `vatt data track`; the run records no DVC version")
        record["md5"] = version
    except VersioningError as err:
        record["unversioned_because"] = str(err)
        log.warning("training on unversioned data: %s", err)
    return record


def run_vocabulary(cfg: Config, storage: Storage) -> tuple[str, ...]:
    """The word vocabulary of the run, fixed when it starts: `<run folder>/vocab.json` when the
    run exists (a resumed run keeps the words its model learned, whatever was ingested since),
    else the data's vocab.json, then saved there. Checkpoints carry it too (evaluation reads
    theirs). A vocabulary larger than data.vocab_size is refused here, before any worker."""
    from vatt.data.loader import load_vocab_words

    import pyarrow.fs as pafs

    path = f"{storage.run_path(cfg.train.run_name)}/{VOCAB_JSON}"
    data_words = load_vocab_words(cfg.data.path, cfg.storage)
    if storage.filesystem.get_file_info(path).type == pafs.FileType.File:
        with storage.filesystem.open_input_stream(path) as stream:
            words = tuple(json.loads(stream.read())["words"])
        if words != data_words:
            log.warning("the data's vocabulary changed since run %s started; the run keeps its "
                        "own (%s) so that word ids do not drift", cfg.train.run_name,
                        storage.run_uri(cfg.train.run_name) + "/" + VOCAB_JSON)
    else:
        words = data_words
    if len(words) > cfg.data.vocab_size:
        raise PreflightError(
            f"the word vocabulary has {len(words)} entries ({cfg.data.path}/vocab.json), more "
            f"than data.vocab_size={cfg.data.vocab_size} rows of the text embedding: raise "
            f"data.vocab_size to at least {len(words)}, or ingest with the same data.vocab_size")
    storage.filesystem.create_dir(storage.run_path(cfg.train.run_name), recursive=True)
    with storage.filesystem.open_output_stream(path) as stream:
        stream.write((json.dumps({"words": list(words)}, indent=0) + "\n").encode())
    return words


def scaling_config(cfg: Config):
    """Ray Train's ScalingConfig of the run: CPU workers, GPU workers, or one worker per TPU VM
    host of a slice (Ray then reserves the slice and TorchTrainer picks the `tpu_dist` backend
    of torch_tpu)."""
    from ray.train import ScalingConfig

    train = cfg.train
    resources = {"CPU": train.cpus_per_worker}
    if train.use_gpu:
        resources["GPU"] = train.gpus_per_worker
    if train.use_tpu:
        resources["TPU"] = train.tpus_per_worker
        return ScalingConfig(num_workers=train.num_workers, use_tpu=True,
                             topology=train.tpu_topology,
                             accelerator_type=train.tpu_accelerator_type,
                             resources_per_worker=resources)
    return ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                         resources_per_worker=resources)


def build_trainer(cfg: Config, storage: Storage, datasets: dict[str, Any],
                  data_version: Optional[dict[str, Any]], callbacks: Iterable[Any] = (),
                  vocab_words: Optional[tuple[str, ...]] = None):
    """The TorchTrainer of a run; `callbacks` (Ray Train UserCallbacks, e.g. a progress feed or
    Tune's report callback) go into its RunConfig."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from vatt.train.loop import train_loop_per_worker

    train = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(cfg), "data_version": data_version,
                           "vocab_words": list(vocab_words) if vocab_words is not None else None},
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=train.run_name, storage_path=storage.path, storage_filesystem=storage.filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=train.max_failures),
            callbacks=list(callbacks)),
        datasets=datasets,
        # only the training data is split between workers; "val" is read whole by the first
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


@dataclass
class PretrainResult:
    run_uri: str  # the run folder
    checkpoint_uri: Optional[str]  # the latest checkpoint folder
    history: list[dict[str, Any]]
    config: Config
    phases: dict[str, float] = field(default_factory=dict)  # seconds (vatt.train.phases)


def write_run_summary(storage: Storage, run_name: str, history: list[dict[str, Any]]) -> None:
    """history.json and loss_curve.png into the run folder (local or object store)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_path = storage.run_path(run_name)
    with storage.filesystem.open_output_stream(f"{run_path}/{HISTORY_JSON}") as stream:
        stream.write(json.dumps(history, indent=1).encode())
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [row["step"] for row in history]
    for key, label in (("loss_total", "total"), ("loss_video_audio", "video-audio NCE"),
                       ("loss_video_text", "video-text MIL-NCE")):
        axis.plot(steps, [row[key] for row in history], label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(f"VATT pretraining: {run_name}")
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    with storage.filesystem.open_output_stream(f"{run_path}/{LOSS_CURVE_PNG}") as stream:
        stream.write(buffer.getvalue())


def workers_precision(cfg: Config) -> PrecisionChoice:
    """The precision the workers will run in, judged on this machine's CPU (workers on other
    machines decide for themselves and print theirs to the worker log)."""
    from vatt.train.precision import choose_precision, cpu_bf16_support

    device_type = "cuda" if cfg.train.use_gpu else "xla" if cfg.train.use_tpu else "cpu"
    return choose_precision(cfg.train.precision, device_type, cpu_bf16_support())


def pretrain(cfg: Config, datasets: Optional[dict[str, Any]] = None,
             callbacks: Iterable[Any] = (), progress: bool = True) -> PretrainResult:
    """Run (or resume) pretraining as configured; `datasets` overrides the ingested dataset,
    `callbacks` are added to the run's Ray Train callbacks, `progress` logs a progress line per
    reported row (vatt.train.progress)."""
    from contextlib import nullcontext

    from vatt.console import init_ray
    from vatt.data.loader import build_dataset
    from vatt.train.phases import DriverClock, describe_phases, run_phases
    from vatt.train.progress import ProgressFeed

    clock = DriverClock()
    clock.mark("start")
    cfg = resolve(cfg)
    check_config(cfg)
    storage = resolve_storage(cfg)
    where = init_ray()  # this process's Ray, the cluster at RAY_ADDRESS, or a local one
    # what the cluster may grow to, not what is up: workers that wait are what an autoscaler adds
    capacity = cluster_capacity()
    check_resources(cfg, capacity.maximum, capacity.describe(where))
    clock.mark("connected")
    version = data_version_of(cfg)
    vocab_words = run_vocabulary(cfg, storage) if datasets is None else None
    if datasets is None:
        datasets = {"train": build_dataset(cfg, cfg.train.dataset_split, training=True,
                                           dataset=cfg.train.dataset, vocab_words=vocab_words)}
        if cfg.train.validation.every > 0:
            from vatt.train.validation import build_validation_dataset

            datasets["val"] = build_validation_dataset(cfg, vocab_words)
    train = cfg.train
    log.info("pretraining run %s: %d steps of %d clips on %d worker(s); run folder %s",
             train.run_name, train.optim.total_steps, train.global_batch_size, train.num_workers,
             storage.run_uri(train.run_name))
    log.info("%s", workers_precision(cfg).describe())
    feed = ProgressFeed(train.optim.total_steps, train.run_name) if progress else nullcontext()
    with feed:
        extra = [feed.callback] if progress else []
        # the controller (started by fit()) reads its poll interval from the driver's environment
        os.environ[HEALTH_CHECK_INTERVAL_ENV] = str(train.poll_interval_s)
        trainer = build_trainer(cfg, storage, datasets, version, [*callbacks, *extra], vocab_words)
        clock.mark("fit_start")
        result = trainer.fit()
        clock.mark("fit_end")
    checkpoint = result.checkpoint
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            history = read_history(folder)
        write_run_summary(storage, cfg.train.run_name, history)
    clock.mark("done")
    phases = run_phases(clock.marks, history)
    if describe_phases(phases):
        log.info("pretraining run %s: %s", train.run_name, describe_phases(phases))
        with storage.filesystem.open_output_stream(
                f"{storage.run_path(train.run_name)}/{PHASES_JSON}") as stream:
            stream.write((json.dumps(phases, indent=1) + "\n").encode())
    checkpoint_uri = None
    if checkpoint is not None:
        checkpoint_uri = (f"s3://{checkpoint.path}" if storage.uri.startswith("s3://")
                          else checkpoint.path)
    return PretrainResult(run_uri=storage.run_uri(cfg.train.run_name),
                          checkpoint_uri=checkpoint_uri, history=history, config=cfg,
                          phases=phases)

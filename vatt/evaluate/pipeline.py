"""Checkpoint -> evaluation -> report -> promotion decision, the whole `vatt evaluate` job.

    folder = resolve_checkpoint("latest", cfg.train.storage_path)
    outcome = evaluate_checkpoint(folder, data, tasks)      # data[task][split]: batches

A checkpoint is a folder written by vatt.train (model.pt, config.yaml, state.json,
data_version.json); a local folder or an s3:// prefix (downloaded to a temporary folder).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from omegaconf import OmegaConf

from vatt.config import Config, ConfigError, from_dict, replace, to_dict
from vatt.evaluate.registry import (CheckpointError, Decision, Registry, RegistryError,
                                    verify_checkpoint)
from vatt.evaluate.report import write_report
from vatt.evaluate.runner import evaluate_model
from vatt.model import build_model
from vatt.storage import ObjectStore, is_s3_uri

CONFIG_FILE, STATE_FILE, DATA_VERSION_FILE = "config.yaml", "state.json", "data_version.json"

log = logging.getLogger("vatt.evaluate")


def _checkpoint_folders_local(root: Path) -> list[tuple[float, str]]:
    return [((path / STATE_FILE).stat().st_mtime, str(path))
            for path in root.glob("*/checkpoint_*") if (path / STATE_FILE).is_file()]


def resolve_checkpoint(ref: str, storage_path: str, store: Optional[ObjectStore] = None) -> str:
    """`ref` as given, or for "latest" the most recently written checkpoint of any run under
    `storage_path` (train.storage_path: <storage_path>/<run>/checkpoint_*/)."""
    if ref != "latest":
        return ref
    store = store or ObjectStore()
    if is_s3_uri(storage_path):
        found = []
        for name in store.list(storage_path):
            parts = name.split("/")
            if len(parts) == 3 and parts[1].startswith("checkpoint_") and parts[2] == STATE_FILE:
                uri = f"{storage_path.rstrip('/')}/{name}"
                bucket, key = uri[len("s3://"):].split("/", 1)
                head = store.client.head_object(Bucket=bucket, Key=key)
                found.append((head["LastModified"].timestamp(), uri.rsplit("/", 1)[0]))
    else:
        found = _checkpoint_folders_local(Path(storage_path))
    if not found:
        raise CheckpointError(f"--checkpoint latest: no checkpoint under {storage_path} "
                              "(train.storage_path); pretrain first or give a checkpoint folder")
    return max(found)[1]


# what the weights were trained for: an evaluation may not change these (spec: the model and the
# input it sees; data.path, eval.*, storage.* are the evaluation's own)
FROZEN_AT_EVALUATION = ("model", "data.num_frames", "data.fps", "data.frame_size",
                        "data.sample_rate", "data.max_text_tokens", "data.vocab_size")


def _interpolations(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [found for key, value in node.items()
                for found in _interpolations(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, list):
        return [found for i, value in enumerate(node) for found in _interpolations(value, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and "${" in node else []


def parse_saved_config(text: str, where: Any) -> Config:
    """A checkpoint's config.yaml as written by training. It is data: an interpolation in it
    (`${oc.env:SECRET}` would be resolved into reports and the registry) is refused, never
    resolved."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CheckpointError(f"checkpoint config {where} is not YAML: {err}") from None
    found = _interpolations(raw)
    if found:
        raise CheckpointError(f"checkpoint config {where} holds interpolations at "
                              f"{', '.join(found[:5])}: a saved config is data and is not "
                              "resolved; remove them (training never writes any)")
    try:
        return from_dict(raw)
    except (ConfigError, Exception) as err:
        raise CheckpointError(f"checkpoint config {where} is unusable: {err}") from None


def with_eval_overrides(cfg: Config, overrides: Iterable[str], where: Any) -> Config:
    """`cfg` with evaluation overrides applied; an override that would change the model or the
    input it was trained on (FROZEN_AT_EVALUATION) is refused, one equal to it is a no-op."""
    overrides = list(overrides)
    if not overrides:
        return cfg
    changed = replace(cfg, overrides)
    before, after = OmegaConf.create(to_dict(cfg)), OmegaConf.create(to_dict(changed))
    refused = []
    for key in FROZEN_AT_EVALUATION:
        if OmegaConf.select(before, key) != OmegaConf.select(after, key):
            refused += [item for item in overrides if item.split("=", 1)[0].startswith(key)]
    if refused:
        raise ConfigError(f"{', '.join(refused)}: an evaluation uses the model and input of the "
                          f"checkpoint's own config ({where}); overrides may set eval.*, "
                          "data.path and storage.*, not the model's architecture or input")
    return changed


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    config: Config
    data_version: Any
    step: Optional[int]
    vocab_words: Optional[tuple[str, ...]] = None  # None: a checkpoint from before they had one


def checkpoint_vocabulary(checkpoint: str | Path,
                          store: Optional[ObjectStore] = None) -> Optional[tuple[str, ...]]:
    """The word vocabulary a checkpoint (folder or s3:// prefix) was trained with; None (and a
    warning) for one written before checkpoints carried it: the data's is used then."""
    from vatt.train.checkpoint import VOCAB_FILE

    uri = f"{str(checkpoint).rstrip('/')}/{VOCAB_FILE}"
    store = store or ObjectStore()
    if not store.exists(uri):
        log.warning("checkpoint %s has no %s (written before checkpoints carried their "
                    "vocabulary): captions are encoded with the data's, which must be the one it "
                    "was trained with", checkpoint, VOCAB_FILE)
        return None
    return tuple(json.loads(store.read_text(uri))["words"])


def checkpoint_config(checkpoint: str | Path, overrides: Iterable[str] = (),
                      store: Optional[ObjectStore] = None) -> Config:
    """The config a checkpoint (folder or s3:// prefix) was trained with, plus `overrides`.
    Raises CheckpointError naming the missing or unusable config file."""
    config_uri = f"{str(checkpoint).rstrip('/')}/{CONFIG_FILE}"
    try:
        if is_s3_uri(str(checkpoint)):
            text = (store or ObjectStore()).read_bytes(config_uri).decode()
        else:
            text = Path(config_uri).read_text()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"checkpoint {checkpoint} has no {CONFIG_FILE}: it does not exist "
                              "or it cannot be rebuilt without the config it was trained with"
                              ) from None
    except Exception as err:  # an object store error: no such key, no access
        raise CheckpointError(f"checkpoint config {config_uri} cannot be read: {err}") from None
    return with_eval_overrides(parse_saved_config(text, config_uri), overrides, config_uri)


def load_checkpoint_for_eval(folder: str | Path, overrides: Iterable[str] = ()) -> LoadedCheckpoint:
    """Build the model of the checkpoint's own config and load its weights (strict).

    `overrides` (dotlist) change evaluation settings only (e.g. eval.probe_epochs=20); the model
    keys come from the checkpoint. Raises CheckpointError naming the missing or corrupt file.
    """
    folder = Path(folder)
    verify_checkpoint(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {CONFIG_FILE}; it cannot be rebuilt "
                              "without the config it was trained with")
    cfg = with_eval_overrides(parse_saved_config(config_path.read_text(), config_path),
                              overrides, config_path)
    from vatt.text import Vocabulary

    vocab_words = checkpoint_vocabulary(folder)
    model = build_model(cfg, Vocabulary(vocab_words) if vocab_words is not None else None)
    try:
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu",
                                         weights_only=True))
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights {folder / 'model.pt'} do not fit the model of "
                              f"its {CONFIG_FILE}: {str(err).splitlines()[0]}") from None
    model.eval()
    data_version = None
    if (folder / DATA_VERSION_FILE).is_file():
        data_version = json.loads((folder / DATA_VERSION_FILE).read_text())
    step = None
    if (folder / STATE_FILE).is_file():
        step = json.loads((folder / STATE_FILE).read_text()).get("step")
    return LoadedCheckpoint(model, cfg, data_version, step, vocab_words)


def _new_report_folder(cfg: Config, checkpoint: str, step: Optional[int],
                       store: ObjectStore) -> str:
    """<eval.output_path>/<run>-step<N>-<UTC second>, with -2, -3, ... when an evaluation in the
    same second already wrote there (a report is never replaced)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = (f"{cfg.eval.output_path.rstrip('/')}/"
            f"{Path(str(checkpoint).rstrip('/')).parent.name}-step{step}-{stamp}")
    folder, attempt = base, 1
    while store.exists(f"{folder}/results.json"):
        attempt += 1
        folder = f"{base}-{attempt}"
    return folder


# the evaluation settings that change a metric's value (where the report goes does not)
_SETTINGS_NOT_IN_IDENTITY = ("output_path", "registry_path", "promotion_metric", "tasks",
                             "promote_incomparable", "promotion_margin")


def evaluation_identity(cfg: Config, data: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What produced an evaluation's numbers: per task its dataset and the SHA-256 of that
    dataset's manifest (the exact clips, by checksum) per split, and the settings that change a
    metric (probe and fine-tuning recipe, windows per clip, crops). Two values of a metric are
    comparable only when this is the same for its task (vatt.evaluate.registry)."""
    from vatt.data.loader import DataError, manifest_sha256

    per_task: dict[str, Any] = {}
    for task, splits in data.items():
        dataset = next((getattr(s, "dataset", None) for s in splits.values()), None)
        hashes = {}
        for split_name, split in splits.items():
            name = getattr(split, "dataset", None)
            try:
                hashes[getattr(split, "split", split_name)] = (
                    manifest_sha256(str(cfg.data.path), name) if name else None)
            except DataError:
                hashes[getattr(split, "split", split_name)] = None
        per_task[task] = {"dataset": dataset, "splits": hashes}
    settings = {key: value for key, value in to_dict(cfg)["eval"].items()
                if key not in _SETTINGS_NOT_IN_IDENTITY}
    settings["eval_num_windows"] = cfg.data.eval_num_windows
    return {"data": per_task, "settings": settings}


@dataclass
class EvaluationOutcome:
    results: dict[str, Any]
    report_uri: str
    decision: Optional[Decision]


def evaluate_checkpoint(checkpoint: str, data: Mapping[str, Mapping[str, Iterable[dict]]],
                        tasks: Optional[Iterable[str]] = None, overrides: Iterable[str] = (),
                        promote: bool = True, store: Optional[ObjectStore] = None,
                        device: str | torch.device = "cpu") -> EvaluationOutcome:
    """Load, evaluate, write the report to <eval.output_path>/<run id>/ and, if `promote`,
    put the result through the registry's promotion gate."""
    store = store or ObjectStore()
    with tempfile.TemporaryDirectory() as tmp:
        local = checkpoint
        if is_s3_uri(checkpoint):
            store.download_dir(checkpoint, tmp)
            local = tmp
        loaded = load_checkpoint_for_eval(local, overrides)
        cfg = loaded.config
        results = evaluate_model(loaded.model, cfg, tasks, data, device=device)
        identity = evaluation_identity(cfg, data)
        results.update(checkpoint=str(checkpoint), step=loaded.step, config_name=cfg.name,
                       data_version=loaded.data_version, evaluation=identity)
        report_uri = write_report(results, _new_report_folder(cfg, checkpoint, loaded.step, store),
                                  store)
        decision = None
        if promote:
            try:
                decision = Registry(cfg.eval.registry_path, store).consider(
                    local if not is_s3_uri(checkpoint) else checkpoint, config=to_dict(cfg),
                    data_version=loaded.data_version, metrics=results["metrics"],
                    metric=cfg.eval.promotion_metric, evaluation=identity,
                    promote_incomparable=cfg.eval.promote_incomparable,
                    margin=cfg.eval.promotion_margin)
            except RegistryError as err:  # the results are kept: say where they are
                raise RegistryError(f"{err} (the evaluation itself is saved: {report_uri}; "
                                    "`vatt evaluate --no-promote` skips the gate)") from None
    return EvaluationOutcome(results, report_uri, decision)


def run_evaluation(checkpoint: str, cfg: Config, overrides: Iterable[str] = (),
                   tasks: Optional[Iterable[str]] = None,
                   datasets: Optional[Mapping[str, str]] = None,
                   promote: bool = True) -> EvaluationOutcome:
    """The `vatt evaluate` job: resolve `checkpoint` ("latest" looks under cfg.train.storage_path),
    read its config (+ `overrides`: eval.*, data.path, ...), build data[task][split] from the
    ingested datasets (vatt.evaluate.data) and evaluate, report and (if `promote`) gate it."""
    from vatt.evaluate.data import build_eval_data, describe_data

    store = ObjectStore.from_config(cfg.storage)  # the endpoint, region and timeouts configured
    folder = resolve_checkpoint(checkpoint, cfg.train.storage_path, store)
    run_cfg = checkpoint_config(folder, overrides, store)
    tasks = list(tasks or run_cfg.eval.tasks)
    log.info("evaluating checkpoint %s on %s", folder, ", ".join(tasks))
    from vatt.console import init_ray

    init_ray()  # the loader reads through Ray Data
    # captions encoded with the checkpoint's own vocabulary, not whatever data.path holds now
    data = build_eval_data(run_cfg, tasks, datasets,
                           vocab_words=checkpoint_vocabulary(folder, store))
    for line in describe_data(data):
        log.info("  %s", line)
    return evaluate_checkpoint(folder, data, tasks, overrides=overrides, promote=promote,
                               store=store)


def describe_decision(decision: Decision) -> str:
    """The gate's decision in one line."""
    verdict = "promoted" if decision.promoted else "not promoted"
    incumbent = ("nothing promoted before" if decision.promoted_value is None
                 else f"promoted model {decision.promoted_value:.4f}")
    return (f"{verdict}: {decision.metric} {decision.candidate_value:.4f} vs {incumbent} "
            f"({decision.reason})")


__all__ = ["resolve_checkpoint", "load_checkpoint_for_eval", "evaluate_checkpoint",
           "checkpoint_config", "run_evaluation", "describe_decision", "parse_saved_config",
           "with_eval_overrides", "FROZEN_AT_EVALUATION", "evaluation_identity",
           "LoadedCheckpoint", "EvaluationOutcome"]

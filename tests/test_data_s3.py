"""Ingestion from an s3:// source and loading shards from an s3:// data path, against the real
SeaweedFS server of tests/conftest.py (no mocks)."""

import json

import numpy as np
import ray

from vatt.config import load_config
from vatt.data.ingest import ingest
from vatt.data.loader import build_dataset, torch_batches
from vatt.data.synthetic import RATE, write_wav
from vatt.storage import ObjectStore


def test_ingest_from_s3_and_load_from_s3(s3_env, tmp_path, monkeypatch):
    """The endpoint only in the config (storage.endpoint_url), as a cluster deployment with its
    own endpoint gives it: ingest and the loader's Ray workers build their store from it."""
    raw = tmp_path / "esc"
    (raw / "audio").mkdir(parents=True)
    (raw / "meta").mkdir()
    t = np.arange(2 * RATE) / RATE
    for name in ("1-1-A-0.wav", "5-2-A-1.wav"):
        write_wav(raw / "audio" / name, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
    (raw / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-1-A-0.wav,1,0,dog,True,1,A\n5-2-A-1.wav,5,1,cat,True,2,A\n")
    store = ObjectStore.from_config()
    prefix = f"s3://{s3_env.bucket}/raw/esc50-test"
    store.upload_dir(raw, prefix)

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    endpoint = f"storage.endpoint_url={s3_env.endpoint_url}"
    cfg = load_config("tiny", ["data.ingest.num_workers=1", endpoint])
    [summary] = ingest(cfg, "esc50", prefix, tmp_path / "data", progress=False)
    assert summary["per_split"] == {"test": 1, "train": 1} and summary["quarantined"] == 0

    # the ingested folder on the object store, read back by the loader's Ray workers
    (tmp_path / "data" / "vocab.json").write_text(json.dumps({"words": ["<pad>", "<unk>"]}))
    data_uri = f"s3://{s3_env.bucket}/data-test"
    store.upload_dir(tmp_path / "data", data_uri)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        cfg = load_config("tiny", [f"data.path={data_uri}", "data.eval_num_windows=1", endpoint])
        [batch] = list(torch_batches(build_dataset(cfg, "train", False, dataset="esc50"), 4, False))
    finally:
        ray.shutdown()
    assert batch["label"].tolist() == [0] and batch["audio"].abs().max() > 0.2

"""Data versions published to object storage for the cluster's jobs (vatt.data.publish), against
the real SeaweedFS server of tests/conftest.py: the layout the loader reads, the order that
keeps a half-finished upload unread, immutability, and the one rule `vatt submit` and the flows
share."""

from __future__ import annotations

import subprocess

import pytest

from conftest import vatt_command
from helpers import tiny_data_folder
from vatt.config import load_config
from vatt.data.publish import (VERSION_FILE, PublishError, content_version, data_for_job,
                               publish, resolve_published)
from vatt.storage import ObjectStore


def test_publish_uploads_the_version_manifests_after_shards_and_the_record_last(
        s3_env, tmp_path, monkeypatch):
    data = tiny_data_folder(tmp_path / "data")
    versions = f"s3://{s3_env.bucket}/datasets-{tmp_path.name}"
    store = ObjectStore.from_config()
    order: list[str] = []
    real_upload, real_write = store.upload_file, store.write_bytes
    monkeypatch.setattr(store, "upload_file",
                        lambda local, uri: (order.append(uri), real_upload(local, uri))[1])
    monkeypatch.setattr(store, "write_bytes",
                        lambda uri, blob: (order.append(uri), real_write(uri, blob))[1])

    published = publish(data, versions, store)

    version = content_version(data)
    assert published.version == version and version.startswith("sha256-")
    assert published.uri == f"{versions}/{version}" and published.kind == "sha256"
    assert published.files == published.uploaded == 5
    # the loader's layout under the version's prefix
    assert sorted(store.list(published.uri)) == sorted(
        ["synthetic-howto100m/manifest.json", "vocab.json", VERSION_FILE,
         *(f"synthetic-howto100m/train/shard-{i:05d}.tar" for i in range(3))])
    names = [uri.rsplit("/", 1)[1] for uri in order]
    assert names[-1] == VERSION_FILE and names[-2] == "manifest.json", names
    record = resolve_published(published.uri, store)
    assert record["version"] == version and record["datasets"] == ["synthetic-howto100m"]


def test_a_version_is_immutable_and_a_new_ingest_is_a_new_version(s3_env, tmp_path):
    data = tiny_data_folder(tmp_path / "data")
    versions = f"s3://{s3_env.bucket}/datasets-{tmp_path.name}"
    store = ObjectStore.from_config()
    first = publish(data, versions, store)
    again = publish(data, versions, store)
    assert (again.version, again.uploaded) == (first.version, 0)  # nothing sent twice

    (data / "synthetic-howto100m" / "train" / "shard-00000.tar").write_bytes(b"changed")
    second = publish(data, versions, store)
    assert second.version != first.version and second.uri != first.uri
    # what a running job reads under the first version did not change
    assert store.read_bytes(f"{first.uri}/synthetic-howto100m/train/shard-00000.tar") == b"\0" * 1000


def test_a_half_finished_upload_is_refused_then_completed(s3_env, tmp_path):
    data = tiny_data_folder(tmp_path / "data")
    versions = f"s3://{s3_env.bucket}/datasets-{tmp_path.name}"
    store = ObjectStore.from_config()
    uri = f"{versions}/{content_version(data)}"
    # an upload cut off after one shard: no manifest, no record
    store.upload_file(data / "synthetic-howto100m/train/shard-00000.tar",
                      f"{uri}/synthetic-howto100m/train/shard-00000.tar")
    with pytest.raises(PublishError, match="not a published data version"):
        resolve_published(uri, store)
    cfg = load_config("tiny", [f"data.path={uri}"])
    with pytest.raises(PublishError, match="vatt data publish"):
        data_for_job(cfg, store)
    done = publish(data, versions, store)
    assert done.uploaded == 4  # the shard already there (same size) is not sent again
    assert resolve_published(uri, store)["files"] == [
        name for name in store.list(uri) if name != VERSION_FILE]
    assert data_for_job(cfg, store)[0].data.path == uri


def test_the_rule_for_jobs_elsewhere(s3_env, tmp_path):
    """A local data.path is published under data.versions_uri and the job's data.path becomes
    the version's prefix; without data.versions_uri the error says what to set."""
    data = tiny_data_folder(tmp_path / "data")
    store = ObjectStore.from_config()
    with pytest.raises(PublishError, match="data.versions_uri=s3://"):
        data_for_job(load_config("tiny", [f"data.path={data}"]), store)
    versions = f"s3://{s3_env.bucket}/datasets-{tmp_path.name}"
    cfg, record = data_for_job(load_config(
        "tiny", [f"data.path={data}", f"data.versions_uri={versions}"]), store)
    assert cfg.data.path == record["uri"] == f"{versions}/{content_version(data)}"
    with pytest.raises(PublishError, match="no dataset"):
        publish(tmp_path / "empty", versions, store)


def test_vatt_data_publish_prints_the_prefix_to_train_on(s3_server, tmp_path):
    data = tiny_data_folder(tmp_path / "data")
    versions = f"s3://{s3_server.bucket}/datasets-{tmp_path.name}"
    done = subprocess.run([*vatt_command(), "data", "publish", f"data.versions_uri={versions}"],
                          cwd=tmp_path, env={**_clean_env(), **s3_server.env}, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    uri = f"{versions}/{content_version(data)}"
    assert f"data.path={uri}" in done.stdout
    refused = subprocess.run([*vatt_command(), "data", "publish"], cwd=tmp_path,
                             env={**_clean_env(), **s3_server.env}, text=True,
                             capture_output=True, timeout=120)
    assert refused.returncode == 2 and "data.versions_uri is not set" in refused.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}

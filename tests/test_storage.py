"""vatt.storage against the local disk and a real SeaweedFS S3 server (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from vatt.config import StorageConfig
from vatt.storage import (ObjectStore, StorageAuthError, StorageConnectionError,
                          StorageNotFoundError, parse_uri, resolve_endpoint)

from conftest import S3Server, _free_ports


def _make_tree(root: Path) -> dict[str, str]:
    """A small folder with nesting, an empty file and one file above the multipart threshold."""
    rng = __import__("random").Random(0)
    files = {"manifest.json": b'{"clips": 3}', "shards/train-000000.tar": rng.randbytes(300_000),
             "shards/train-000001.tar": rng.randbytes(9 * 1024 * 1024),  # > 8 MiB: multipart
             "shards/deep/empty.txt": b"", "with space/é.json": b"{}"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return _checksums(root)


def _checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _unique_prefix(server: S3Server) -> str:
    return f"s3://{server.bucket}/tests/{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# No server needed


def test_parse_uri():
    loc = parse_uri("s3://vatt-data/runs/ckpt")
    assert (loc.bucket, loc.key, loc.is_s3, str(loc)) == ("vatt-data", "runs/ckpt", True,
                                                          "s3://vatt-data/runs/ckpt")
    assert parse_uri("s3://vatt-data").prefix == ""
    assert parse_uri("s3://vatt-data/a/").prefix == "a/"
    assert str(parse_uri("s3://b/a").join("x/", "y.json")) == "s3://b/a/x/y.json"
    local = parse_uri("data/shards")
    assert not local.is_s3 and local.local_path == Path("data/shards")
    with pytest.raises(ValueError, match="names no bucket"):
        parse_uri("s3:///key")
    with pytest.raises(ValueError, match="only local paths and s3://"):
        parse_uri("gs://bucket/key")


def test_endpoint_from_config_then_env(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://from-env:8333")
    assert resolve_endpoint(None) == ("http://from-env:8333", "env AWS_ENDPOINT_URL_S3")
    assert resolve_endpoint("http://cfg:1") == ("http://cfg:1", "storage.endpoint_url")
    store = ObjectStore.from_config(StorageConfig(endpoint_url="http://cfg:1", max_attempts=2))
    assert (store.endpoint_url, store.max_attempts) == ("http://cfg:1", 2)


def test_local_folder_round_trip(tmp_path):
    store = ObjectStore()
    expected = _make_tree(tmp_path / "src")
    assert store.upload_dir(tmp_path / "src", tmp_path / "remote") == len(expected)
    assert store.list(tmp_path / "remote") == sorted(expected)
    assert store.download_dir(tmp_path / "remote", tmp_path / "dst") == len(expected)
    assert _checksums(tmp_path / "dst") == expected
    store.write_text(tmp_path / "reg/promoted.json", '{"run": "a"}')
    assert store.read_text(tmp_path / "reg/promoted.json") == '{"run": "a"}'
    with pytest.raises(StorageNotFoundError, match="no such file or folder"):
        store.read_bytes(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# Real S3 (SeaweedFS)


def test_s3_folder_round_trip_keeps_checksums(s3_env, tmp_path):
    store = ObjectStore()  # endpoint and keys from the environment only
    prefix = _unique_prefix(s3_env)
    expected = _make_tree(tmp_path / "src")

    assert store.upload_dir(tmp_path / "src", prefix) == len(expected)
    assert store.list(prefix) == sorted(expected)
    assert store.exists(f"{prefix}/manifest.json") and store.exists(f"{prefix}/shards")
    assert not store.exists(f"{prefix}/nothing-here")
    assert store.download_dir(prefix, tmp_path / "dst") == len(expected)
    assert _checksums(tmp_path / "dst") == expected

    # single objects: bytes in, same bytes out; files both ways
    store.write_bytes(f"{prefix}/registry/promoted.json", b'{"run": "r1"}')
    assert store.read_bytes(f"{prefix}/registry/promoted.json") == b'{"run": "r1"}'
    store.download_file(f"{prefix}/shards/train-000000.tar", tmp_path / "one.tar")
    assert hashlib.md5((tmp_path / "one.tar").read_bytes()).hexdigest() == \
        expected["shards/train-000000.tar"]
    store.delete(f"{prefix}/registry/promoted.json")
    assert not store.exists(f"{prefix}/registry/promoted.json")


def test_s3_missing_object_and_bucket_say_which(s3_env, tmp_path):
    store = ObjectStore()
    prefix = _unique_prefix(s3_env)
    with pytest.raises(StorageNotFoundError, match="no such object") as err:
        store.read_bytes(f"{prefix}/absent.json")
    assert f"{prefix}/absent.json" in str(err.value)
    with pytest.raises(StorageNotFoundError, match="no such object"):
        store.download_file(f"{prefix}/absent.json", tmp_path / "x")
    with pytest.raises(StorageNotFoundError, match="empty or missing"):
        store.download_dir(f"{prefix}/absent", tmp_path / "y")
    for call in (lambda: store.list("s3://no-such-bucket-vatt/x"),
                 lambda: store.read_bytes("s3://no-such-bucket-vatt/x"),
                 lambda: store.download_file("s3://no-such-bucket-vatt/x", tmp_path / "z"),
                 lambda: store.exists("s3://no-such-bucket-vatt/x")):
        with pytest.raises(StorageNotFoundError, match="bucket 'no-such-bucket-vatt' does not exist") as err:
            call()
        assert s3_env.endpoint_url in str(err.value)
    store.ensure_bucket("s3://vatt-made-by-test/x")
    assert store.list("s3://vatt-made-by-test") == []


def test_s3_wrong_credentials_name_endpoint_bucket_and_env_vars(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = ObjectStore()
    for call in (lambda: store.list(f"s3://{s3_env.bucket}/x"),
                 lambda: store.write_bytes(f"s3://{s3_env.bucket}/x", b"1"),
                 lambda: store.download_file(f"s3://{s3_env.bucket}/x", tmp_path / "x")):
        with pytest.raises(StorageAuthError) as err:
            call()
        message = str(err.value)
        for needed in (s3_env.endpoint_url, s3_env.bucket, "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY", "rejected the credentials"):
            assert needed in message, (needed, message)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
    with pytest.raises(StorageAuthError, match="rejected the credentials"):
        ObjectStore().read_bytes(f"s3://{s3_env.bucket}/x")


def test_s3_no_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageAuthError, match="no usable S3 credentials.*AWS_ACCESS_KEY_ID"):
        ObjectStore().list(f"s3://{s3_env.bucket}/x")


def test_unreachable_endpoint_names_it_and_the_setting(s3_env, monkeypatch):
    (port,) = _free_ports(1)  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    store = ObjectStore(StorageConfig(max_attempts=2, connect_timeout_s=0.5))
    with pytest.raises(StorageConnectionError) as err:
        store.read_bytes(f"s3://{s3_env.bucket}/x")
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message and "env AWS_ENDPOINT_URL" in message
    assert "unreachable after 2 attempts" in message


def test_pyarrow_filesystem_uses_the_same_endpoint_and_keys(s3_env):
    import pyarrow.fs

    store = ObjectStore()
    prefix = _unique_prefix(s3_env)
    fs, path = store.pyarrow_filesystem(f"{prefix}/checkpoints")
    assert isinstance(fs, pyarrow.fs.S3FileSystem)
    assert path == prefix[len("s3://"):] + "/checkpoints"
    with fs.open_output_stream(f"{path}/ckpt-1/model.pt") as out:  # as Ray Train writes
        out.write(b"weights")
    assert store.read_bytes(f"{prefix}/checkpoints/ckpt-1/model.pt") == b"weights"
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    assert [i.path for i in infos if i.type == pyarrow.fs.FileType.File] == \
        [f"{path}/ckpt-1/model.pt"]
    local_fs, local_path = store.pyarrow_filesystem("runs")
    assert isinstance(local_fs, pyarrow.fs.LocalFileSystem)
    assert local_path == os.path.abspath("runs")


def test_temporary_credentials_are_not_frozen_into_the_pyarrow_filesystem(
        s3_env, monkeypatch, tmp_path):
    """Keys that expire (here from a credential_process, as STS or IRSA give them) are left to
    pyarrow's own AWS credential chain, which refreshes them; static keys are passed as given."""
    import json

    import pyarrow.fs

    assert ObjectStore().pyarrow_credentials()["access_key"] == s3_env.access_key  # static
    process = tmp_path / "credentials.sh"
    process.write_text("#!/bin/sh\necho '" + json.dumps({
        "Version": 1, "AccessKeyId": s3_env.access_key, "SecretAccessKey": s3_env.secret_key,
        "Expiration": "2099-01-01T00:00:00Z"}) + "'\n")
    process.chmod(0o700)
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = {process}\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    store = ObjectStore()
    assert store.pyarrow_credentials() == {}
    prefix = _unique_prefix(s3_env)
    fs, path = store.pyarrow_filesystem(prefix)
    with fs.open_output_stream(f"{path}/refreshable.txt") as out:  # pyarrow found the keys itself
        out.write(b"ok")
    assert store.read_bytes(f"{prefix}/refreshable.txt") == b"ok"
    assert isinstance(fs, pyarrow.fs.S3FileSystem)


def test_default_store_follows_the_environment(s3_env, monkeypatch):
    from vatt.storage import default_store

    default_store().write_bytes(f"s3://{s3_env.bucket}/tests/default.txt", b"1")
    assert default_store() is default_store()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "changed")
    with pytest.raises(StorageAuthError):
        default_store().read_bytes(f"s3://{s3_env.bucket}/tests/default.txt")

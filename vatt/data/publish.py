"""Data versions in object storage, for jobs that run somewhere else (a KubeRay RayJob's pods).

One rule says where a data version lives; ingest, the flows and `vatt submit` all follow it:

    <data.versions_uri>/<version>/                 the ingested folder (data.path), in the
                                                   loader's layout: <dataset>/manifest.json,
                                                   <dataset>/<split>/shard-*.tar, ...
    <data.versions_uri>/<version>/VERSION.json     written last: what the version is, where it
                                                   came from; a version without it is unfinished

- `version` is a content hash, so equal versions are byte-identical data: the DVC version (the
  md5 in data.dvc) when data.path is the project's DVC-tracked data/ folder and matches it,
  else `sha256-<hex>` over every file's relative path and SHA-256.
- A version is immutable: publishing a complete one again uploads nothing (its record is read
  back and checked); a later ingest is another version under another prefix, so a job that is
  reading one never sees a file change.
- Within a version, every dataset's `manifest.json` is uploaded after its shards, and
  `VERSION.json` after everything: a reader that finds the manifest finds every shard it lists,
  and `resolve_published` refuses a version whose upload did not finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from vatt.config import Config
    from vatt.storage import ObjectStore

log = logging.getLogger("vatt.data")

VERSION_FILE = "VERSION.json"
MANIFEST = "manifest.json"
SHA256_PREFIX = "sha256-"


class PublishError(RuntimeError):
    """A data version cannot be published or read; the message says what to do."""


@dataclass(frozen=True)
class PublishedData:
    version: str  # the content hash (DVC md5, or sha256-...)
    uri: str  # <data.versions_uri>/<version>: what data.path is for a job that reads it
    kind: str  # "dvc" or "sha256": how the version was computed
    files: int  # files in the version
    uploaded: int  # files sent now (0: the version was already complete)
    bytes: int  # bytes in the version

    @property
    def record(self) -> dict[str, Any]:
        return {"version": self.version, "uri": self.uri, "kind": self.kind, "files": self.files,
                "uploaded": self.uploaded, "bytes": self.bytes}


def version_uri(versions_uri: str, version: str) -> str:
    """Where data version `version` lives under `versions_uri` (the rule above)."""
    return f"{versions_uri.rstrip('/')}/{version}"


def _files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.relative_to(folder).as_posix())


def content_version(folder: "str | os.PathLike[str]") -> str:
    """`sha256-<hex>` of a folder: SHA-256 over each file's relative POSIX path and the SHA-256
    of its bytes, in path order (hidden files, e.g. a half-written `.x.tmp`, left out)."""
    root = Path(folder)
    outer = hashlib.sha256()
    for path in _files(root):
        inner = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return SHA256_PREFIX + outer.hexdigest()


def local_version(folder: "str | os.PathLike[str]") -> tuple[str, str]:
    """(version, kind) of a local data folder: its DVC version when it is the project's tracked
    data/ and matches data.dvc, else its content hash."""
    from vatt.data.versioning import VersioningError, data_version, find_repo_root, workspace_matches

    path = Path(folder).resolve()
    try:
        root = find_repo_root(path.parent)
        if path == (root / "data").resolve() and (root / "data.dvc").is_file() \
                and workspace_matches(root):
            return data_version(root), "dvc"
    except VersioningError:
        pass
    return content_version(path), "sha256"


def read_published(uri: str, store: "ObjectStore") -> Optional[dict[str, Any]]:
    """The VERSION.json of a published version at `uri`, or None when there is none (not a
    version, or its upload has not finished)."""
    from vatt.storage import StorageNotFoundError

    try:
        return json.loads(store.read_bytes(f"{uri.rstrip('/')}/{VERSION_FILE}"))
    except StorageNotFoundError:
        return None


def publish(folder: "str | os.PathLike[str]", versions_uri: str, store: "ObjectStore",
            version: Optional[str] = None, kind: Optional[str] = None,
            source: Optional[str] = None) -> PublishedData:
    """Upload the data folder `folder` as its version under `versions_uri` (computed with
    `local_version` unless given). A version already complete there is left as it is (its
    file list must agree, else PublishError); an unfinished one is completed."""
    root = Path(folder)
    files = _files(root) if root.is_dir() else []
    if not any(p.name == MANIFEST for p in files):
        raise PublishError(f"{root} holds no dataset (no */{MANIFEST}): ingest into it first "
                           f"(`vatt ingest SOURCE --out {root}`) or pull a version (`vatt data "
                           "pull`)")
    if version is None:
        version, kind = local_version(root)
    uri = version_uri(versions_uri, version)
    names = [p.relative_to(root).as_posix() for p in files]
    size = sum(p.stat().st_size for p in files)
    existing = read_published(uri, store)
    if existing is not None:
        if sorted(existing.get("files", [])) != names:
            raise PublishError(
                f"{uri} is a published version whose files differ from {root}'s, though they "
                f"share the version {version}: a published version is never rewritten. Was "
                f"{root} changed after `vatt data track`? Run it again (new version), or delete "
                "the prefix by hand if it is known to be bad")
        log.info("data version %s is already published at %s", version, uri)
        return PublishedData(version, uri, existing.get("kind", kind or "?"), len(names), 0, size)
    present = {name: length for name, length, _ in store.list_details(uri)}
    # shards first, then each dataset's manifest, then the version record
    todo = [name for name in names
            if present.get(name) != (root / name).stat().st_size or name.endswith(MANIFEST)]
    shards = [name for name in todo if not name.endswith(MANIFEST)]
    manifests = [name for name in todo if name.endswith(MANIFEST)]
    log.info("publishing data version %s to %s: %d of %d files", version, uri, len(todo),
             len(names))
    store.ensure_bucket(uri)
    store.upload_files([(root / name, f"{uri}/{name}") for name in shards])
    for name in manifests:
        store.upload_file(root / name, f"{uri}/{name}")
    record = {"version": version, "kind": kind, "files": names, "bytes": size,
              "datasets": sorted({name.split("/")[0] for name in names if "/" in name}),
              "source": source or str(root.resolve()),
              "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    store.write_text(f"{uri}/{VERSION_FILE}", json.dumps(record, indent=2) + "\n")
    return PublishedData(version, uri, kind or "sha256", len(names), len(todo), size)


def resolve_published(uri: str, store: "ObjectStore") -> dict[str, Any]:
    """The record of the published version at `uri`; PublishError when there is none."""
    record = read_published(uri, store)
    if record is None:
        raise PublishError(
            f"data.path={uri} is not a published data version (no {VERSION_FILE}: the prefix "
            "was written some other way, or its upload did not finish). Publish a data folder "
            "with `vatt data publish data data.versions_uri=s3://BUCKET/datasets` and use the "
            "prefix it prints, or leave data.path local and set data.versions_uri: `vatt "
            "submit` and the flows publish it first")
    return record


def data_for_job(cfg: "Config", store: "ObjectStore") -> tuple["Config", dict[str, Any]]:
    """The config a job elsewhere reads its data with, and the version's record: data.path a
    local folder -> published under data.versions_uri, data.path switched to the version's
    prefix; data.path already a published version's prefix -> checked and kept."""
    from vatt.config import replace

    path = cfg.data.path
    if path.startswith("s3://"):
        record = resolve_published(path, store)
        return cfg, {**record, "uri": path.rstrip("/"), "uploaded": 0}
    if not cfg.data.versions_uri:
        raise PublishError(
            f"data.path={path} is a folder on this machine, which a job's pods cannot read; set "
            "data.versions_uri=s3://BUCKET/datasets so that its version is published there "
            "first, or set data.path to a published version's s3:// prefix")
    if not cfg.data.versions_uri.startswith("s3://"):
        raise PublishError(f"data.versions_uri={cfg.data.versions_uri} must be an s3:// prefix "
                           "(where the cluster's pods read data versions)")
    published = publish(path, cfg.data.versions_uri, store)
    return replace(cfg, [f"data.path={published.uri}"]), published.record


__all__ = ["PublishedData", "PublishError", "VERSION_FILE", "content_version", "local_version",
           "publish", "read_published", "resolve_published", "data_for_job", "version_uri"]

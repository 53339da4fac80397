"""The `ingest` flow: a raw source (or the generated default dataset) -> validated shards under
`data.path`, versioned with DVC when that is the project's data/ folder.

Ingestion is cached across flow runs on what determines its output (the source, its input
files, the ingest settings and code: vatt.data.ingest.source_fingerprint), so a second run on
unchanged input does no work. A cache hit is checked against the data folder: when its
manifests are not the ones the cached run wrote (deleted, edited, or a `dvc pull` of another
data revision), the ingest runs again.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from prefect import flow

from vatt_flows.artifacts import publish_data_version, publish_ingest
from vatt_flows.params import DatasetName, Overrides, Preset, Source
from vatt_flows.tasks import (fingerprint_source, ingest_source, ingested_data, publish_data,
                         resolve_config, version_data)
from vatt.config import DEFAULT_PRESET, Config

log = logging.getLogger("vatt.flows")


def ingest_data(cfg: Config, source: str, path: Optional[str], version: bool = True,
                name: Optional[str] = None) -> dict[str, Any]:
    """The steps of an ingest inside any flow: fingerprint, ingest (cached), version, publish.
    `name`: the dataset folder under data.path (default: the source's name).
    Returns {"summaries", "version", "cached"}."""
    out = cfg.data.path
    fingerprint = fingerprint_source(cfg, source, path, out, name)
    state = ingest_source(cfg, source, path, out, fingerprint, name, return_state=True)
    ingested = state.result()
    cached = state.is_completed() and state.name == "Cached"
    if cached:
        now = ingested_data(source, out, name)
        changed = sorted(folder for folder, digest in now.items()
                         if digest is None or digest != ingested.data.get(folder))
        if changed:
            log.info("ingest cached, but the data is not what it wrote (%s/%s/manifest.json "
                     "%s: a dvc pull of another revision, an edit or a deletion): ingesting "
                     "again", out, changed[0], "is gone" if now[changed[0]] is None else "differs")
            ingested = ingest_source.with_options(refresh_cache=True)(
                cfg, source, path, out, fingerprint, name)
            cached = False
        else:
            log.info("ingest: cached (the input and settings are unchanged, fingerprint %s); "
                     "nothing to do", fingerprint[:12])
    versioned = version_data(cfg, out, version)
    publish_ingest(ingested.summaries, versioned)
    return {"summaries": ingested.summaries, "version": versioned.version, "cached": cached}


@flow(name="ingest", description="Raw video/audio/text -> validated shards under data/, "
                                 "versioned with DVC")
def ingest(source: Source = "synthetic", path: Optional[str] = None, preset: Preset = DEFAULT_PRESET,
           overrides: Overrides = [], version: bool = True,
           name: Optional[DatasetName] = None) -> dict[str, Any]:
    """`source` in its published layout at `path` (a folder or s3:// prefix; for `synthetic`,
    where the generated raw media go) into `data.path`/`name` (default: the source's name,
    e.g. name=kinetics600 beside an earlier kinetics400). With data.versions_uri set, the data
    folder's version is then published there (vatt.data.publish) for the cluster's jobs."""
    cfg = resolve_config(preset, overrides)
    result = ingest_data(cfg, source, path, version, name)
    if cfg.data.versions_uri:  # for jobs elsewhere: the version, immutable in object storage
        published = publish_data(cfg)
        publish_data_version(published)
        result["published"] = {key: published[key] for key in ("version", "uri")}
    return result

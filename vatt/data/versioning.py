"""Data versioning with DVC: `data/` (the ingested shards) is tracked by the top-level `data.dvc`.

    track("data")            # dvc add data      -> data.dvc (commit it with git), with what
                             # made the data (desc, meta: datasets, ingest parameters, generator)
    push()                   # dvc push          -> the default remote in .dvc/config
    pull(rev="v1")           # data.dvc as of git revision v1, then dvc pull
    data_version()           # the md5 in data.dvc: what a training run records

`.dvc/config` holds two remotes and no credentials:
- `local` (default): the folder `.dvc/storage` inside the project (git-ignored), so push/pull work
  on a fresh clone with no server;
- `s3`: `s3://vatt-data/dvc` through dvc-s3. Its endpoint is `remote.s3.endpointurl` if set
  (`dvc remote modify --local s3 endpointurl URL`, kept out of git in .dvc/config.local), else
  `storage.endpoint_url` / `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` as for vatt.storage; keys
  come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).

Before DVC talks to an S3 remote, the bucket is checked with vatt.storage, so wrong keys, a missing
bucket or an unreachable endpoint fail at once with a message that names them (DVC itself would
retry for minutes and then report only "N files failed to upload").
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, replace as dc_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from vatt.config import StorageConfig
from vatt.storage import ObjectStore, StorageError

if TYPE_CHECKING:
    from dvc.repo import Repo

DATA_DVC = "data.dvc"


class VersioningError(RuntimeError):
    """A DVC operation that cannot be done; the message says what to do."""


def find_repo_root(start: "str | os.PathLike[str] | None" = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding a `.dvc/` folder."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise VersioningError(f"no DVC repository at or above {here}: run from the project (where "
                          ".dvc/config is) or pass repo_root")


def _root(repo_root: "str | os.PathLike[str] | None") -> Path:
    return find_repo_root(repo_root)


def _quiet_dvc() -> None:
    """DVC's INFO hints ("To track the changes with git, run ...") are for its own CLI; the
    outcome is reported by the caller. Shown with VATT_VERBOSE=1."""
    from vatt.console import verbose

    logging.getLogger("dvc").setLevel(logging.INFO if verbose() else logging.WARNING)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------
# data.dvc


def _read_dvc_file(root: Path, rev: Optional[str]) -> dict[str, Any]:
    import yaml

    if rev is None:
        path = root / DATA_DVC
        if not path.exists():
            raise VersioningError(
                f"no {DATA_DVC} in {root}: the data is not versioned yet. Ingest first (`vatt "
                f"ingest` ends with dvc add), or run `vatt data track data`, and commit {DATA_DVC}")
        text = path.read_text()
    else:
        shown = _git(root, "show", f"{rev}:{DATA_DVC}")
        if shown.returncode:
            raise VersioningError(
                f"git revision '{rev}' has no {DATA_DVC} in {root} ({shown.stderr.strip()}): "
                f"name a commit, tag or branch where {DATA_DVC} was committed")
        text = shown.stdout
    try:
        outs = yaml.safe_load(text)["outs"]
        return outs[0]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as err:
        raise VersioningError(f"{DATA_DVC} in {root} (rev {rev or 'workspace'}) is not a DVC file "
                              f"with an 'outs' entry ({err}); re-create it with `vatt data track`")


def data_version(repo_root: "str | os.PathLike[str] | None" = None, rev: Optional[str] = None) -> str:
    """The content hash of the dataset: the md5 in data.dvc (without DVC's ".dir" suffix).

    Equal hashes mean byte-identical data; `rev` reads data.dvc as of a git revision.
    """
    out = _read_dvc_file(_root(repo_root), rev)
    digest = out.get("md5")
    if not digest:
        raise VersioningError(f"{DATA_DVC} has no md5 for '{out.get('path')}': it was added with "
                              "--no-commit; run `vatt data track data` again")
    return str(digest).removesuffix(".dir")


# ---------------------------------------------------------------------------------------------
# DVC repository with the remote resolved


@contextmanager
def _dvc_errors(action: str, remote: Optional[str] = None) -> Iterator[None]:
    from dvc.exceptions import DvcException

    try:
        yield
    except DvcException as err:
        cause = err.__cause__ or err.__context__
        detail = f"{err}" + (f" (cause: {type(cause).__name__}: {cause})" if cause else "")
        where = f" with remote '{remote}'" if remote else ""
        raise VersioningError(f"dvc {action}{where} failed: {detail}") from err


def _remote_settings(root: Path, remote: Optional[str]) -> tuple[str, dict[str, Any]]:
    from dvc.config import Config as DvcConfig

    config = DvcConfig(dvc_dir=str(root / ".dvc"))
    name = remote or config["core"].get("remote")
    if not name:
        raise VersioningError(f"no DVC remote given and no default in {root}/.dvc/config; pass "
                              "remote= (e.g. 'local' or 's3')")
    if name not in config["remote"]:
        raise VersioningError(f"unknown DVC remote '{name}'. Remotes in {root}/.dvc/config: "
                              f"{', '.join(sorted(config['remote'])) or 'none'}")
    return name, dict(config["remote"][name])


@contextmanager
def _open(root: Path, remote: Optional[str], storage: "StorageConfig | None",
          action: str) -> Iterator[tuple["Repo", str]]:
    """The DVC repo, with the S3 endpoint filled in and the remote checked before use."""
    from dvc.repo import Repo

    _quiet_dvc()
    name, settings = _remote_settings(root, remote)
    url = str(settings.get("url", ""))
    overrides: dict[str, Any] = {}
    if url.startswith("s3://"):
        endpoint = settings.get("endpointurl")
        if endpoint:  # the remote's own endpoint; region, retries and timeouts still storage.*
            store = ObjectStore(dc_replace(storage or StorageConfig(), endpoint_url=endpoint))
            store.endpoint_source = f"remote.{name}.endpointurl in .dvc/config(.local)"
        else:
            store = ObjectStore(storage)
            if store.endpoint_url:  # storage.endpoint_url or the environment's, handed to DVC
                overrides = {"remote": {name: {"endpointurl": store.endpoint_url}}}
        try:
            store.check_bucket(url)
        except StorageError as err:
            raise VersioningError(f"dvc {action}: DVC remote '{name}' ({url}) is not usable: {err}") from None
    else:
        local = Path(url) if os.path.isabs(url) else (root / ".dvc" / url)
        if action == "pull" and not local.is_dir():
            raise VersioningError(
                f"dvc pull: the local DVC remote '{name}' folder {local.resolve()} does not exist: "
                "nothing was pushed to it from this machine; push first, or pull from the S3 "
                "remote (remote='s3')")
    with Repo(str(root), config=overrides or None) as repo:
        yield repo, name


# ---------------------------------------------------------------------------------------------
# The operations


@dataclass(frozen=True)
class DataDescription:
    """What made an ingested data folder, as data.dvc carries it (DVC's top-level `desc` and
    `meta`, which DVC keeps out of every hash): one line for a reader, and the record."""

    desc: Optional[str]
    meta: Optional[dict[str, Any]]


def _one_or_each(values: dict[str, Any]) -> Any:
    """The value every dataset shares, else {dataset: value}."""
    distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
    return next(iter(values.values())) if len(distinct) == 1 else values


def describe_data(data_dir: "str | os.PathLike[str]") -> DataDescription:
    """What made the datasets under `data_dir`, from their manifests: the datasets and their
    sources, the ingest parameters, and for the generated default dataset the generator
    (version, seed, scale, cue), e.g. desc "synthetic generator 5, seed 0, scale 1, cue colour
    (8 datasets)". Nothing (None, None) when no folder holds a manifest."""
    sources, params, generators = {}, {}, {}
    for manifest in sorted(Path(data_dir).glob("*/manifest.json")):
        try:
            record = json.loads(manifest.read_text())
            if not isinstance(record, dict):
                raise TypeError(f"a JSON {type(record).__name__}, not an object")
        except (ValueError, TypeError) as err:
            raise VersioningError(f"{manifest} is not an ingest manifest ({err}): ingest that "
                                  "dataset again, or move its folder out of the data folder") from None
        name = manifest.parent.name
        # a manifest written before these fields (or by hand) is described as far as it goes
        sources[name], params[name] = record.get("source", "unknown"), record.get("params")
        if record.get("generator") is not None:
            generators[name] = record["generator"]
    if not sources:
        return DataDescription(None, None)
    meta: dict[str, Any] = {"datasets": sources, "ingest": _one_or_each(params)}
    lines = []
    if generators:
        meta["generator"] = _one_or_each(generators)
        for stamp in {json.dumps(g, sort_keys=True): g for g in generators.values()}.values():
            count = sum(g == stamp for g in generators.values())
            lines.append(f"synthetic generator {stamp.get('version')}, seed {stamp.get('seed')}, "
                         f"scale {stamp.get('scale'):g}, cue {stamp.get('cue')} ({count} "
                         f"dataset{'s' if count > 1 else ''})")
    others = sorted(name for name in sources if name not in generators)
    if others:
        lines.append(f"{', '.join(others)} (ingested: {', '.join(sorted({sources[n] for n in others}))})")
    return DataDescription("; ".join(lines), meta)


def track(data_dir: "str | os.PathLike[str]" = "data",
          repo_root: "str | os.PathLike[str] | None" = None) -> Path:
    """`dvc add data_dir`: hash it into the cache and write `<data_dir>.dvc` beside it
    (for `data`, the top-level data.dvc), with `desc` and `meta` saying what made the data
    (describe_data). Returns that file; commit it with git."""
    from dvc.repo import Repo

    root = _root(repo_root)
    _quiet_dvc()
    target = Path(data_dir)
    target = target if target.is_absolute() else root / target
    if not target.is_dir() or not any(target.iterdir()):
        raise VersioningError(f"cannot track {target}: not a folder with files in it (ingest first)")
    try:
        relative = target.resolve().relative_to(root)
    except ValueError:
        raise VersioningError(f"cannot track {target}: it is outside the repository {root}") from None
    described = describe_data(target)
    with Repo(str(root)) as repo, _dvc_errors("add"):
        # absolute: DVC resolves relative targets against cwd
        for stage in repo.add(str(root / relative)):
            # `dvc add` keeps the desc and meta of the file it replaces: they are written anew,
            # so they say what made this data, not an earlier one (DVC hashes neither)
            stage.desc, stage.meta = described.desc, described.meta
            stage.dump()
    return root / f"{relative}.dvc"


def push(remote: Optional[str] = None, repo_root: "str | os.PathLike[str] | None" = None,
         storage: "StorageConfig | None" = None) -> int:
    """`dvc push data.dvc` to `remote` (default: core.remote). Returns the number of files sent."""
    root = _root(repo_root)
    _read_dvc_file(root, None)  # a clear error if there is nothing to push
    with _open(root, remote, storage, "push") as (repo, name), _dvc_errors("push", name):
        return int(repo.push(targets=[str(root / DATA_DVC)], remote=name) or 0)


def _changed_outs(root: Path) -> list[str]:
    """The states ('modified', 'deleted', ...) of data/ against what data.dvc records."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo, _dvc_errors("status"):
        changed = repo.status(targets=[str(root / DATA_DVC)])
    return [state for entries in changed.values() for entry in entries if isinstance(entry, dict)
            for state in (entry.get("changed outs") or {}).values()]


def workspace_matches(repo_root: "str | os.PathLike[str] | None" = None) -> bool:
    """True when data/ holds exactly what data.dvc records (DVC's status is clean)."""
    root = _root(repo_root)
    _quiet_dvc()
    return not _changed_outs(root)


def _committed_somewhere(root: Path, text: str) -> bool:
    """True when `text` is data.dvc as committed in some revision (it can be restored)."""
    commits = _git(root, "log", "--all", "--format=%H", "--", DATA_DVC).stdout.split()
    return any(_git(root, "show", f"{commit}:{DATA_DVC}").stdout == text for commit in commits)


def _check_nothing_lost(root: Path, rev: str) -> None:
    """Refuse a pull of another revision that would overwrite local work: a data.dvc that no
    commit holds, or data/ files that differ from what data.dvc records (not yet tracked)."""
    dvc_file = root / DATA_DVC
    if dvc_file.exists() and not _committed_somewhere(root, dvc_file.read_text()):
        raise VersioningError(
            f"{dvc_file} has changes no commit holds; pulling '{rev}' would replace it. Commit "
            f"it (git add {DATA_DVC} && git commit), or discard it (git checkout -- {DATA_DVC}), "
            "then pull again")
    if dvc_file.exists() and (root / "data").exists():
        if any(state != "deleted" for state in _changed_outs(root)):
            raise VersioningError(
                f"{root / 'data'} differs from what {DATA_DVC} records (data ingested or edited "
                f"but not tracked); pulling '{rev}' would overwrite it. Track it first (`vatt data "
                "track` and commit data.dvc), or move data/ away, then pull again")


def pull(rev: Optional[str] = None, remote: Optional[str] = None,
         repo_root: "str | os.PathLike[str] | None" = None,
         storage: "StorageConfig | None" = None) -> str:
    """Make `data/` what data.dvc says at git revision `rev` (default: the workspace data.dvc),
    fetching from `remote`. With `rev`, data.dvc is first restored from that revision
    (`git checkout rev -- data.dvc`), after checking that no local work would be lost; if the
    pull then fails, data.dvc is put back as it was. Returns the data version."""
    root = _root(repo_root)
    before: Optional[str] = None
    if rev is not None:
        if rev.startswith("-"):
            raise VersioningError(f"data revision {rev!r} starts with '-': name a commit, tag or "
                                  "branch (it is passed to git, which would read an option)")
        _read_dvc_file(root, rev)  # clear error for an unknown rev or one without data.dvc
        _check_nothing_lost(root, rev)
        dvc_file = root / DATA_DVC
        before = dvc_file.read_text() if dvc_file.exists() else None
        checkout = _git(root, "checkout", rev, "--", DATA_DVC)
        if checkout.returncode:
            raise VersioningError(f"cannot restore {DATA_DVC} from '{rev}': {checkout.stderr.strip()}")
    try:
        version = data_version(root)
        with _open(root, remote, storage, "pull") as (repo, name), _dvc_errors("pull", name):
            repo.pull(targets=[str(root / DATA_DVC)], remote=name, force=True)
    except Exception:
        if rev is not None:  # leave data.dvc as it was before this call
            if before is None:
                (root / DATA_DVC).unlink(missing_ok=True)
            else:
                (root / DATA_DVC).write_text(before)
        raise
    return version


@dataclass
class VersionRecord:
    """What happened to the data version after an ingest."""

    version: Optional[str]  # the md5 in data.dvc, None when not tracked
    pushed: int  # files sent to the remote
    message: str  # one line for the console and the run logs


def version_ingested(out: "str | os.PathLike[str]", storage: "StorageConfig | None" = None,
                     enabled: bool = True,
                     repo_root: "str | os.PathLike[str] | None" = None) -> VersionRecord:
    """After ingesting into the project's `data/` folder: `dvc add` (data.dvc) and `dvc push`.
    Output elsewhere, or `enabled=False`, is left untracked and the record says so."""
    try:
        root = find_repo_root(repo_root)
    except VersioningError:
        root = None
    if root is None or Path(out).resolve() != (root / "data").resolve():
        return VersionRecord(None, 0, f"data version: not tracked ({out} is not the project's "
                             "data/ folder that data.dvc tracks; ingest with --out data to "
                             "version it)")
    if not enabled:
        return VersionRecord(None, 0, "data version: not tracked (--no-version); run `vatt data "
                             "track` and `vatt data push` to version it")
    track(out, repo_root=root)
    count = push(remote=storage.dvc_remote if storage else None, repo_root=root, storage=storage)
    version = data_version(root)
    return VersionRecord(version, count, f"data version: {version} (data.dvc; {count} files "
                         "pushed); commit data.dvc with git")


__all__ = ["track", "push", "pull", "data_version", "find_repo_root", "version_ingested",
           "workspace_matches", "describe_data", "DataDescription",
           "VersionRecord", "VersioningError", "DATA_DVC"]

"""vatt.data.versioning: real DVC in a temporary git repository that carries this project's
.dvc/config (both remotes), pushing to a local folder and to a real SeaweedFS S3 server."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from vatt.config import StorageConfig, load_config
from vatt.data.ingest import ingest_params
from vatt.data.synthetic import GENERATOR_VERSION, LAYOUTS, generator_stamp
from vatt.data.versioning import VersioningError, data_version, describe_data, pull, push, track
from vatt.storage import ObjectStore

from conftest import _free_ports

PROJECT = Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def _write_data(root: Path, seed: int) -> dict[str, str]:
    """A small stand-in for ingested shards: a manifest and a few binary "shards"."""
    rng = random.Random(seed)
    data = root / "data"
    shutil.rmtree(data, ignore_errors=True)
    for i in range(3):
        (data / "shards").mkdir(parents=True, exist_ok=True)
        (data / "shards" / f"train-{i:06d}.tar").write_bytes(rng.randbytes(50_000 + i))
    (data / "manifest.json").write_text(f'{{"seed": {seed}}}')
    return _checksums(data)


def _checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _forget_local_copies(root: Path) -> None:
    """As on a fresh clone: no data/ and no DVC cache, only what git and the remote hold."""
    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "tests@vatt.invalid")
    _git(root, "config", "user.name", "vatt tests")
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore"):
        shutil.copyfile(PROJECT / name, root / name)
    _git(root, "add", ".dvc", ".dvcignore")
    _git(root, "commit", "-q", "-m", "dvc")
    return root


def _commit_version(root: Path, seed: int, tag: str) -> dict[str, str]:
    expected = _write_data(root, seed)
    assert track("data", repo_root=root) == root / "data.dvc"
    _git(root, "add", "data.dvc", ".gitignore")
    _git(root, "commit", "-q", "-m", f"data {tag}")
    _git(root, "tag", tag)
    return expected


def test_track_writes_data_dvc_and_version_is_the_content_hash(repo):
    _commit_version(repo, seed=1, tag="v1")
    version = data_version(repo)
    assert len(version) == 32 and f"md5: {version}.dir" in (repo / "data.dvc").read_text()
    assert "/data" in (repo / ".gitignore").read_text()  # git ignores the data, tracks data.dvc
    _commit_version(repo, seed=2, tag="v2")
    assert data_version(repo) != version
    assert data_version(repo, rev="v1") == version
    _commit_version(repo, seed=1, tag="v1-again")  # same bytes, same version
    assert data_version(repo) == version


def test_local_remote_push_pull_round_trip(repo):
    expected = _commit_version(repo, seed=3, tag="v1")
    assert push(repo_root=repo) > 0  # default remote: the local folder .dvc/storage
    assert (repo / ".dvc" / "storage").is_dir()
    _forget_local_copies(repo)
    assert pull(repo_root=repo) == data_version(repo)
    assert _checksums(repo / "data") == expected


def test_s3_push_pull_round_trip_of_a_named_revision(repo, s3_env):
    v1 = _commit_version(repo, seed=4, tag="v1")
    v1_version = data_version(repo)
    assert push(remote="s3", repo_root=repo) > 0
    v2 = _commit_version(repo, seed=5, tag="v2")
    assert push(remote="s3", repo_root=repo) > 0
    # the objects are in the bucket the s3 remote names, under its prefix
    assert any(name.startswith("files/md5/") for name in ObjectStore().list(f"s3://{s3_env.bucket}/dvc"))

    _forget_local_copies(repo)
    assert pull(rev="v1", remote="s3", repo_root=repo) == v1_version
    assert _checksums(repo / "data") == v1
    assert data_version(repo) == v1_version

    _forget_local_copies(repo)
    pull(rev="v2", remote="s3", repo_root=repo)
    assert _checksums(repo / "data") == v2


def test_s3_wrong_credentials_fail_clearly(repo, s3_env, monkeypatch):
    _commit_version(repo, seed=6, tag="v1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(VersioningError) as err:
        push(remote="s3", repo_root=repo)
    message = str(err.value)
    for needed in ("remote 's3'", "s3://vatt-data/dvc", s3_env.endpoint_url,
                   "rejected the credentials", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert needed in message, (needed, message)
    with pytest.raises(VersioningError, match="rejected the credentials"):
        pull(remote="s3", repo_root=repo)


def test_s3_unreachable_endpoint_fails_clearly(repo, s3_env, monkeypatch):
    _commit_version(repo, seed=7, tag="v1")
    (port,) = _free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    with pytest.raises(VersioningError, match=f"127.0.0.1:{port}.*unreachable"):
        push(remote="s3", repo_root=repo, storage=StorageConfig(max_attempts=1))


def test_missing_pieces_are_named(repo, tmp_path):
    with pytest.raises(VersioningError, match="no data.dvc in .*vatt data track"):
        data_version(repo)
    with pytest.raises(VersioningError, match="no data.dvc"):
        push(repo_root=repo)
    with pytest.raises(VersioningError, match="not a folder with files"):
        track("data", repo_root=repo)
    _commit_version(repo, seed=8, tag="v1")
    with pytest.raises(VersioningError, match="revision 'no-such-tag' has no data.dvc"):
        pull(rev="no-such-tag", repo_root=repo)
    with pytest.raises(VersioningError, match="local DVC remote 'local' folder .* does not exist"):
        pull(repo_root=repo)
    with pytest.raises(VersioningError, match="unknown DVC remote 'nope'.*local, s3"):
        push(remote="nope", repo_root=repo)
    with pytest.raises(VersioningError, match="no DVC repository"):
        data_version(tmp_path / "elsewhere")


def test_cli_data_commands(repo, s3_env, monkeypatch, capsys):
    from vatt.cli import main

    monkeypatch.chdir(repo)
    assert main(["data", "version"]) == 1
    assert "no data.dvc" in capsys.readouterr().err
    expected = _write_data(repo, seed=9)
    assert main(["data", "track"]) == 0
    version = data_version(repo)
    assert main(["data", "version"]) == 0 and capsys.readouterr().out.strip().endswith(version)
    assert main(["data", "push", "storage.dvc_remote=s3"]) == 0
    assert f"data version {version}" in capsys.readouterr().out
    _forget_local_copies(repo)
    assert main(["data", "pull", "--remote", "s3"]) == 0
    assert capsys.readouterr().out.strip() == version
    assert _checksums(repo / "data") == expected


def test_ingest_into_data_ends_with_dvc_add_and_push(repo, monkeypatch, capsys):
    """`vatt ingest --out data` in the project versions the result: data.dvc + a pushed remote."""
    from vatt.cli import main

    monkeypatch.chdir(repo)
    code = main(["ingest", "--source", "synthetic", "--out", "data",
                 "data.ingest.synthetic_scale=0.05"])
    out = capsys.readouterr().out
    assert code == 0, out
    version = data_version(repo)
    assert (repo / "data.dvc").is_file() and f"data version: {version}" in out
    pushed = [p for p in (repo / ".dvc" / "storage").rglob("*") if p.is_file()]
    assert len(pushed) >= len(list((repo / "data").rglob("*.tar")))
    # data.dvc says which generator made the data, as every manifest records it
    written = yaml.safe_load((repo / "data.dvc").read_text())
    stamp = {"name": "vatt.data.synthetic", "version": GENERATOR_VERSION, "seed": 0,
             "scale": 0.05, "cue": "colour"}
    assert written["meta"]["generator"] == stamp
    assert written["desc"] == "synthetic generator 5, seed 0, scale 0.05, cue colour (8 datasets)"
    for manifest in (repo / "data").glob("*/manifest.json"):
        assert json.loads(manifest.read_text())["generator"] == stamp
    # a run on a named revision pulls that revision first; an unknown one is a clear error
    assert main(["pretrain", "--data-rev", "no-such-tag"]) == 2
    assert "no-such-tag" in capsys.readouterr().err


def test_ingest_elsewhere_says_it_is_not_versioned(repo, tmp_path, monkeypatch, capsys):
    from vatt.cli import main

    monkeypatch.chdir(repo)
    code = main(["ingest", "--source", "synthetic", "--out", str(tmp_path / "elsewhere"),
                 "data.ingest.synthetic_scale=0.05"])
    assert code == 0
    assert "not tracked" in capsys.readouterr().out
    assert not (repo / "data.dvc").exists()


def test_pulling_another_revision_never_loses_local_work(repo):
    v1 = _commit_version(repo, seed=10, tag="v1")
    v1_version = data_version(repo)
    push(repo_root=repo)
    _commit_version(repo, seed=11, tag="v2")
    push(repo_root=repo)

    with pytest.raises(VersioningError, match="starts with '-'"):
        pull(rev="--output=/tmp/x", repo_root=repo)

    # data ingested (or edited) but not tracked: refused, data/ untouched
    (repo / "data" / "manifest.json").write_text('{"seed": "edited"}')
    edited = _checksums(repo / "data")
    with pytest.raises(VersioningError, match="differs from what data.dvc records"):
        pull(rev="v1", repo_root=repo)
    assert _checksums(repo / "data") == edited
    track("data", repo_root=repo)  # now data.dvc holds what no commit has
    unsaved = (repo / "data.dvc").read_text()
    with pytest.raises(VersioningError, match="changes no commit holds"):
        pull(rev="v1", repo_root=repo)
    assert (repo / "data.dvc").read_text() == unsaved

    # committed work: the pull goes ahead, and back again
    _git(repo, "checkout", "-q", "--", "data.dvc")
    pull(repo_root=repo)
    assert pull(rev="v1", repo_root=repo) == v1_version and _checksums(repo / "data") == v1


def test_a_failed_pull_puts_data_dvc_back(repo):
    _commit_version(repo, seed=12, tag="v1")
    push(repo_root=repo)
    _commit_version(repo, seed=13, tag="v2")  # never pushed: the remote lacks its objects
    _commit_version(repo, seed=14, tag="v3")
    push(repo_root=repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    current = (repo / "data.dvc").read_text()
    with pytest.raises(VersioningError):
        pull(rev="v2", repo_root=repo)
    assert (repo / "data.dvc").read_text() == current


def test_a_run_records_the_data_it_reads_not_a_stale_data_dvc(repo, caplog):
    from vatt.config import load_config
    from vatt.train.pretrain import data_version_of

    dataset = repo / "data" / "synthetic-howto100m"
    dataset.mkdir(parents=True)
    (dataset / "manifest.json").write_text('{"clips": ["a"]}')
    track("data", repo_root=repo)
    cfg = load_config("tiny", [f"data.path={repo / 'data'}"])
    record = data_version_of(cfg)
    assert record["md5"] == data_version(repo)
    assert record["manifest_sha256"] == hashlib.sha256(b'{"clips": ["a"]}').hexdigest()

    # re-ingested without tracking (--no-version): data.dvc is stale, the run says so
    (dataset / "manifest.json").write_text('{"clips": ["b"]}')
    with caplog.at_level("WARNING", logger="vatt.train"):
        record = data_version_of(cfg)
    assert record["md5"] is None and record["data_dvc_md5"] == data_version(repo)
    assert "differs from" in record["unversioned_because"] and "differs from" in caplog.text
    assert record["manifest_sha256"] == hashlib.sha256(b'{"clips": ["b"]}').hexdigest()

    # another folder of the same repository is not what data.dvc versions
    other = repo / "scratch"
    shutil.copytree(repo / "data", other)
    record = data_version_of(load_config("tiny", [f"data.path={other}"]))
    assert record["md5"] is None and "is not the data/ folder" in record["unversioned_because"]


# The committed data.dvc is what the default ingest writes (`vatt pipeline`, or this command),
# so that a default pipeline leaves the checkout unmodified
REFRESH_DATA_DVC = ("refresh it from the repository's root: `vatt ingest --source synthetic` "
                    "(the default ingest into data/, as `vatt pipeline` runs it: dvc add + dvc "
                    "push to the local remote; move any other dataset out of data/ first), "
                    "then `git add data.dvc`")


def _data_dvc(path: Path) -> dict:
    """What data.dvc says about the data: the out's hash, size and file count, desc, meta."""
    text = yaml.safe_load(path.read_text())
    out = text["outs"][0]
    return {"md5": out.get("md5"), "size": out.get("size"), "nfiles": out.get("nfiles"),
            "desc": text.get("desc"), "meta": text.get("meta")}


def _differences(committed: dict, written: dict) -> str:
    return "; ".join(f"{key}: committed {committed[key]!r}, the default ingest writes "
                     f"{written[key]!r}" for key in committed if committed[key] != written[key])


def test_the_committed_data_dvc_names_the_default_configs_generator_and_ingest():
    """The fast half of the guard: the committed data.dvc records the generator (version,
    seed, scale, cue), ingest parameters and datasets that the default config ingests today,
    so a new generator version or a changed `tiny` data setting without a refreshed data.dvc
    fails here, without a pipeline run."""
    cfg = load_config("tiny")
    expected = {"datasets": {f"synthetic-{layout}": "synthetic" for layout in LAYOUTS},
                "ingest": asdict(ingest_params(cfg)),
                "generator": {"name": "vatt.data.synthetic", **generator_stamp(cfg)}}
    committed = _data_dvc(PROJECT / "data.dvc")["meta"] or {}
    wrong = {key: (committed.get(key), value) for key, value in expected.items()
             if committed.get(key) != value}
    assert not wrong, (f"data.dvc is not what the default ingest writes ({wrong}: committed, "
                       f"expected); {REFRESH_DATA_DVC}")


def test_the_default_pipeline_writes_the_committed_data_dvc(default_pipeline):
    """The whole guard: `vatt pipeline` (the README's main job, in a project holding this
    checkout's data.dvc) writes exactly the committed data.dvc, so it leaves the checkout
    unmodified."""
    committed = _data_dvc(PROJECT / "data.dvc")
    written = _data_dvc(default_pipeline.project / "data.dvc")
    assert written == committed, (f"data.dvc is not what the default pipeline writes "
                                  f"({_differences(committed, written)}); {REFRESH_DATA_DVC}")


def test_track_records_what_made_the_data_and_replaces_an_older_record(repo):
    """dvc add keeps the desc and meta of the data.dvc it replaces; track writes them anew
    from the manifests, and DVC hashes neither (the md5 and the clean status stay)."""
    _write_data(repo, seed=3)
    for name, scale in (("synthetic-a", 0.5), ("synthetic-b", 0.5)):
        (repo / "data" / name).mkdir()
        stamp = {"name": "vatt.data.synthetic", "version": 4, "seed": 0, "scale": scale,
                 "cue": "motion"}
        (repo / "data" / name / "manifest.json").write_text(json.dumps(
            {"source": "synthetic", "params": {"fps": 5.0}, "generator": stamp, "clips": []}))
    (repo / "data" / "kinetics600").mkdir()
    (repo / "data" / "kinetics600" / "manifest.json").write_text(json.dumps(
        {"source": "kinetics", "params": {"fps": 5.0}, "clips": []}))
    track("data", repo_root=repo)
    first = yaml.safe_load((repo / "data.dvc").read_text())
    assert first["desc"] == ("synthetic generator 4, seed 0, scale 0.5, cue motion (2 datasets); "
                             "kinetics600 (ingested: kinetics)")
    assert first["meta"]["generator"]["version"] == 4 and first["meta"]["ingest"] == {"fps": 5.0}
    assert first["meta"]["datasets"] == {"kinetics600": "kinetics", "synthetic-a": "synthetic",
                                         "synthetic-b": "synthetic"}
    # the same data under another record: same md5; the record is the new one, not dvc's old
    text = (repo / "data.dvc").read_text()
    (repo / "data.dvc").write_text(text.replace("version: 4", "version: 3"))
    track("data", repo_root=repo)
    second = yaml.safe_load((repo / "data.dvc").read_text())
    assert second == first
    # another generator for one dataset: each dataset's record, and data.dvc follows the data
    manifest = repo / "data" / "synthetic-b" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["generator"]["version"] = 5
    manifest.write_text(json.dumps(record))
    track("data", repo_root=repo)
    third = yaml.safe_load((repo / "data.dvc").read_text())
    assert third["meta"]["generator"]["synthetic-b"]["version"] == 5
    assert "generator 4" in third["desc"] and "generator 5" in third["desc"]
    assert third["outs"][0]["md5"] != first["outs"][0]["md5"]
    assert describe_data(repo / "data").meta == third["meta"]
    assert subprocess.run([str(Path(sys.executable).parent / "dvc"), "status"], cwd=repo,
                          capture_output=True, text=True).stdout.strip() == \
        "Data and pipelines are up to date."

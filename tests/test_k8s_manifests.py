"""k8s/: every target renders with `kubectl kustomize`, every object it renders is one an API server
takes (tests/k8s_validate.py: KubeRay's CRDs, Kubernetes' own schemas, unknown fields rejected),
and the manifests say what the platform needs: jobs that clean up after themselves, accelerators
requested and tolerated, slices whose numbers agree, non-root pods with requests and limits,
shared memory and object-store settings on every Ray container, Secrets only as placeholders,
RBAC namespaced and minimal (one ServiceAccount per role), and every pod within the Pod Security
Standard `restricted` that the namespace enforces (tests/pod_security.py plays the admission
controller the test cluster's 1.20 API server lacks). Needs `kubectl` (with kustomize v5) on PATH; no cluster.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Iterator

import jsonschema
import pytest
import yaml

from k8s_validate import validate
from pod_security import pod_templates, violations

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
# every kustomization a user applies or `vatt submit` renders
TARGETS = {
    "base": "base",
    "cpu": "overlays/cpu",
    "gpu": "overlays/gpu",
    "tpu": "overlays/tpu",
    "raycluster": "raycluster",
    "object-store": "object-store",
    "rbac": "rbac",
    "prefect": "prefect",
    "namespace": "namespace",
    "platform": ".",  # namespace + object-store + rbac + prefect in one namespace
}
RAY_JOB_TARGETS = ("base", "cpu", "gpu", "tpu")
OBJECT_STORE = "vatt-object-store"
WORKER_ACCOUNT = "vatt-prefect-worker"  # the Prefect worker
FLOW_RUN_ACCOUNT = "vatt-flow-run"  # the flow runs it starts
RAY_ACCOUNT = "vatt-ray"  # every Ray pod: no rights, no token
SHM = "/dev/shm"


def _render(target: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: the k8s/ tests render with `kubectl kustomize` "
                    "(kubectl >= 1.27, which bundles kustomize v5); install it")
    done = subprocess.run([kubectl, "kustomize", str(K8S / TARGETS[target])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize k8s/{TARGETS[target]} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {target: _render(target) for target in TARGETS}


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _images() -> dict[str, str]:
    """k8s/image/images.yaml: the name in the manifests -> the image reference it becomes."""
    tags = yaml.safe_load_all((K8S / "image" / "images.yaml").read_text())
    return {t["imageTag"]["name"]: f"{t['imageTag']['newName']}:{t['imageTag']['newTag']}" for t in tags}


def _ray_pods(cluster_spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def _pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] == "RayJob":
        yield f"{where} submitter", doc["spec"]["submitterPodTemplate"]["spec"]
        for group, spec in _ray_pods(doc["spec"]["rayClusterSpec"]):
            yield f"{where} {group}", spec
    elif doc["kind"] == "RayCluster":
        for group, spec in _ray_pods(doc["spec"]):
            yield f"{where} {group}", spec
    elif doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield where, doc["spec"]["template"]["spec"]


def _ray_containers(docs: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(where, pod spec, container) of every Ray head and worker container."""
    for doc in docs:
        if doc["kind"] not in ("RayJob", "RayCluster"):
            continue
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        for group, pod in _ray_pods(spec):
            yield f"{doc['kind']}/{doc['metadata']['name']} {group}", pod, pod["containers"][0]


def _flow_run_job(rendered: dict[str, list[dict]]) -> dict:
    """The Job the Prefect worker creates for a flow run, rendered from the work pool's base job
    template the way Prefect does (its own `apply_values`), with the defaults the worker's init
    container gives the pool."""
    from prefect.utilities.templating import apply_values

    template = _base_job_template(rendered)
    worker = _one(rendered["platform"], "Deployment", "vatt-prefect-worker")
    values = {name: schema["default"] for name, schema in template["variables"]["properties"].items()
              if schema.get("default") is not None}
    values.update(image=worker["spec"]["template"]["spec"]["containers"][0]["image"],
                  namespace=worker["metadata"]["namespace"], name="vatt-flow-run",
                  command=["prefect", "flow-run", "execute"])
    return apply_values(template["job_configuration"], values)["job_manifest"]


def _base_job_template(rendered: dict[str, list[dict]]) -> dict:
    config_maps = [d for d in rendered["prefect"] if d["kind"] == "ConfigMap"
                   and d["metadata"]["name"].startswith("vatt-prefect-base-job-template")]
    assert len(config_maps) == 1, "k8s/prefect renders no ConfigMap with the base job template"
    return json.loads(config_maps[0]["data"]["base-job-template.json"])


# ---------------------------------------------------------------------------------------------
# Every object is valid


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_is_valid(rendered: dict[str, list[dict]], target: str) -> None:
    assert rendered[target], f"k8s/{TARGETS[target]} renders nothing"
    problems = [problem for doc in rendered[target] for problem in validate(doc)]
    assert problems == []


def test_the_validator_rejects_a_broken_rayjob(rendered: dict[str, list[dict]]) -> None:
    good = _one(rendered["gpu"], "RayJob")
    assert validate(good) == []

    unknown_field = copy.deepcopy(good)
    unknown_field["spec"]["shutdownAfterJobFinish"] = True  # the real one ends in "...Finishes"
    assert any("shutdownAfterJobFinish" in p for p in validate(unknown_field))

    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("workerGroupSpecs.0.replicas" in p for p in validate(wrong_type))

    nested_unknown = copy.deepcopy(good)  # deep in the pod template, where a typo hides well
    nested_unknown["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "resource"] = {"limits": {"cpu": "1"}}
    assert any("'resource' was unexpected" in p for p in validate(nested_unknown))

    unserved = copy.deepcopy(good)
    unserved["apiVersion"] = "ray.io/v2"
    assert validate(unserved) != []

    core = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 1}}
    assert validate(core) != []


# ---------------------------------------------------------------------------------------------
# RayJobs


@pytest.mark.parametrize("target", RAY_JOB_TARGETS)
def test_rayjob_runs_once_and_cleans_up(rendered: dict[str, list[dict]], target: str) -> None:
    job = _one(rendered[target], "RayJob", "vatt-pretrain")
    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 0
    # what `vatt submit` replaces per job is there, with defaults
    assert spec["entrypoint"].startswith("vatt pretrain --preset mbs")
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"], dict)
    # the Ray of the image (pyproject.toml pins ray==<major>.<minor>.*)
    pinned = next(d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"] if d.startswith("ray["))
    ray_minor = re.search(r"==(\d+\.\d+)\.\*", pinned).group(1)
    assert spec["rayClusterSpec"]["rayVersion"].startswith(ray_minor + ".")
    # the names the client relies on
    cluster = spec["rayClusterSpec"]
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["workers"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["name"] == "ray-head"
    assert cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["name"] == "ray-worker"
    # the submitter needs only Ray's CLI: the small CPU image
    assert spec["submitterPodTemplate"]["spec"]["containers"][0]["image"] == _images()["vatt"]


def _entrypoint_args(entrypoint: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in entrypoint.split() if "=" in arg)


def test_gpu_workers_request_tolerate_and_select_gpu_nodes(rendered: dict[str, list[dict]]) -> None:
    job = _one(rendered["gpu"], "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    group = cluster["workerGroupSpecs"][0]
    worker = group["template"]["spec"]
    resources = worker["containers"][0]["resources"]
    gpus = resources["limits"]["nvidia.com/gpu"]
    assert gpus >= 1 and resources["requests"]["nvidia.com/gpu"] == gpus
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    assert worker["nodeSelector"].get("cloud.google.com/gke-accelerator")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head["requests"] and "nvidia.com/gpu" not in head["limits"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    args = _entrypoint_args(job["spec"]["entrypoint"])
    assert args["train.use_gpu"] == "true"
    assert int(args["train.num_workers"]) == group["replicas"] * gpus  # one Ray Train worker per GPU
    for _, _, container in _ray_containers([job]):
        assert container["image"] == _images()["vatt-gpu"]


def test_tpu_slice_numbers_agree(rendered: dict[str, list[dict]]) -> None:
    job = _one(rendered["tpu"], "RayJob")
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker = group["template"]["spec"]
    resources = worker["containers"][0]["resources"]
    chips_per_host = resources["limits"]["google.com/tpu"]
    assert chips_per_host >= 1 and resources["requests"]["google.com/tpu"] == chips_per_host
    accelerator = worker["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"]
    topology = worker["nodeSelector"]["cloud.google.com/gke-tpu-topology"]
    chips = math.prod(int(n) for n in topology.split("x"))
    assert group["numOfHosts"] * chips_per_host == chips, (
        f"topology {topology} has {chips} chips, not numOfHosts {group['numOfHosts']} x "
        f"{chips_per_host} per host")
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]  # whole slices
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    args = _entrypoint_args(job["spec"]["entrypoint"])
    assert args["train.use_tpu"] == "true"
    assert args["train.tpu_topology"] == topology
    # tpu-v6e-slice -> TPU-V6E, Ray's accelerator type
    assert args["train.tpu_accelerator_type"] == "TPU-" + accelerator.split("-")[1].upper()
    assert int(args["train.num_workers"]) == group["numOfHosts"] * group["replicas"]  # one per host
    for _, _, container in _ray_containers([job]):
        assert container["image"] == _images()["vatt-tpu"]


# ---------------------------------------------------------------------------------------------
# Every pod: non-root, requests and limits; Ray pods: shared memory, object-store settings


def _all_pods(rendered: dict[str, list[dict]]) -> Iterator[tuple[str, dict]]:
    seen = set()
    for docs in rendered.values():
        for doc in docs:
            for where, spec in _pod_specs(doc):
                if where + json.dumps(spec, sort_keys=True) not in seen:
                    seen.add(where + json.dumps(spec, sort_keys=True))
                    yield where, spec
    yield "flow-run Job", _flow_run_job(rendered)["spec"]["template"]["spec"]


def test_every_pod_runs_non_root_with_requests_and_limits(rendered: dict[str, list[dict]]) -> None:
    pods = list(_all_pods(rendered))
    assert len(pods) >= 10
    for where, pod in pods:
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, where
        assert (context.get("runAsUser"), context.get("runAsGroup"), context.get("fsGroup")) == (
            1000, 1000, 1000), where  # the image's user (Dockerfile)
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for container in pod["containers"] + pod.get("initContainers", []):
            name = f"{where} container {container['name']}"
            _assert_resources(name, container.get("resources", {}))
            _assert_locked_down(name, container.get("securityContext", {}))
    autoscaler = _one(rendered["raycluster"], "RayCluster")["spec"]["autoscalerOptions"]
    _assert_resources("RayCluster autoscaler", autoscaler["resources"])
    _assert_locked_down("RayCluster autoscaler", autoscaler["securityContext"])


def test_every_pod_meets_the_restricted_pod_security_standard(
        rendered: dict[str, list[dict]]) -> None:
    """What the namespace's `pod-security.kubernetes.io/enforce: restricted` admits: every pod
    template of every target (KubeRay's autoscaler sidecar included), and the flow-run Job."""
    checked = 0
    for docs in [*rendered.values(), [_flow_run_job(rendered)]]:
        for doc in docs:
            for where, template in pod_templates(doc):
                found = violations(template["spec"], (template.get("metadata") or {}).get(
                    "annotations"))
                assert found == [], f"{where}: {found}"
                checked += 1
    assert checked >= 20


def test_the_namespace_enforces_restricted_and_the_check_refuses_what_it_refuses(
        rendered: dict[str, list[dict]]) -> None:
    labels = _one(rendered["platform"], "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert re.fullmatch(r"v1\.\d+|latest", labels["pod-security.kubernetes.io/enforce-version"])
    # the check is the admission controller's: each way out of the profile is refused
    pod = copy.deepcopy(_flow_run_job(rendered)["spec"]["template"]["spec"])
    assert violations(pod) == []
    container = lambda p: p["containers"][0]  # noqa: E731
    breaks = {
        "hostNetwork=true": lambda p: p.update(hostNetwork=True),
        "privileged=true": lambda p: container(p)["securityContext"].update(privileged=True),
        "allowPrivilegeEscalation != false":
            lambda p: container(p)["securityContext"].pop("allowPrivilegeEscalation"),
        "capabilities.drop does not include ALL":
            lambda p: container(p)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        "adds capability SYS_ADMIN":
            lambda p: container(p)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "runAsNonRoot != true": lambda p: (p["securityContext"].pop("runAsNonRoot"),
                                           container(p)["securityContext"].pop("runAsNonRoot")),
        "runAsUser=0": lambda p: container(p)["securityContext"].update(runAsUser=0),
        "no seccompProfile": lambda p: p["securityContext"].pop("seccompProfile"),
        "seccompProfile.type=Unconfined":
            lambda p: container(p)["securityContext"].update(
                seccompProfile={"type": "Unconfined"}),
        "hostPath": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "type nfs is not allowed":
            lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "hostPort 80": lambda p: container(p).update(ports=[{"containerPort": 80,
                                                             "hostPort": 80}]),
        "sysctl kernel.msgmax": lambda p: p["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    }
    for expected, edit in breaks.items():
        broken = copy.deepcopy(pod)
        edit(broken)
        assert any(expected in line for line in violations(broken)), (expected,
                                                                       violations(broken))
    with_init = copy.deepcopy(pod)  # init containers are checked too
    with_init["initContainers"] = [{"name": "setup", "image": "x"}]
    assert any('container "setup"' in line for line in violations(with_init))


def _assert_resources(where: str, resources: dict) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: no cpu/memory {kind}"
    for name, limit in resources["limits"].items():
        if "/" in name:  # extended resources (GPUs, TPUs): Kubernetes wants requests == limits
            assert resources["requests"].get(name) == limit, f"{where}: {name} requests != limits"


def _assert_locked_down(where: str, context: dict) -> None:
    assert context.get("allowPrivilegeEscalation") is False, where
    assert context.get("capabilities", {}).get("drop") == ["ALL"], where
    assert not context.get("privileged"), where
    assert context.get("runAsNonRoot") is not False and context.get("runAsUser") != 0, where


def test_ray_containers_share_memory_and_read_the_object_store_settings(
        rendered: dict[str, list[dict]]) -> None:
    containers = [c for target in ("gpu", "tpu", "raycluster") for c in _ray_containers(rendered[target])]
    assert len(containers) == 6
    for where, pod, container in containers:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert SHM in mounts, f"{where}: no {SHM}"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[SHM])
        assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"], where
        env_from = container.get("envFrom", [])
        assert {"configMapRef": {"name": OBJECT_STORE}} in env_from, where
        assert {"secretRef": {"name": OBJECT_STORE}} in env_from, where
    flow_run = _flow_run_job(rendered)["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": OBJECT_STORE}} in flow_run["envFrom"]


def test_object_store_settings_are_what_vatt_reads_and_hold_no_keys(
        rendered: dict[str, list[dict]]) -> None:
    from vatt.storage import ENDPOINT_ENV_VARS

    settings = _one(rendered["object-store"], "ConfigMap", OBJECT_STORE)["data"]
    assert set(settings) & set(ENDPOINT_ENV_VARS), "no endpoint variable vatt.storage reads"
    assert "AWS_REGION" in settings
    assert not {key for key in settings if "KEY" in key or "TOKEN" in key or "SECRET" in key}


def test_secrets_ship_as_templates_of_placeholders_only(rendered: dict[str, list[dict]]) -> None:
    templates = sorted((K8S / "secrets").glob("*.yaml"))
    assert {p.name for p in templates} >= {"object-store.example.yaml", "prefect-postgres.example.yaml"}
    referenced = {OBJECT_STORE, "vatt-prefect-postgres"}
    for path in templates:
        secret = yaml.safe_load(path.read_text())
        assert validate(secret) == [], path.name
        assert "data" not in secret, f"{path.name}: placeholders go in stringData"
        assert set(secret["stringData"].values()) == {"REPLACE_ME"}, f"{path.name}: not a placeholder"
        referenced.discard(secret["metadata"]["name"])
        assert "kubectl" in path.read_text() and "create secret generic" in path.read_text()
    assert not referenced, f"no template for Secret(s) {referenced}"
    object_store = yaml.safe_load((K8S / "secrets" / "object-store.example.yaml").read_text())
    assert set(object_store["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # no kustomization renders a Secret: the user creates them
    assert not [d for docs in rendered.values() for d in docs if d["kind"] == "Secret"]


# ---------------------------------------------------------------------------------------------
# RBAC


# what the client and the Prefect worker need (group, resource, verb); the Role must allow each
# what each account's code calls (k8s/rbac: each rule names the calls): (group, resource, verb)
NEEDED = {
    # prefect-kubernetes' worker and observer: flow runs as Jobs, their pods watched, a
    # crashed run's log forwarded
    WORKER_ACCOUNT: {("batch", "jobs", verb) for verb in ("create", "get", "list", "watch", "delete")}
    | {("", "pods", "list"), ("", "pods", "watch"), ("", "pods/log", "get")},
    # vatt.cluster.client.KubeClient: create, follow and delete RayJobs; why one waits
    FLOW_RUN_ACCOUNT: {("ray.io", "rayjobs", verb) for verb in ("create", "get", "delete")}
    | {("", "pods", "list"), ("", "pods/log", "get"), ("", "events", "list")},
}


def _granted(role: dict) -> set[tuple[str, str, str]]:
    allowed = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
        allowed |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    return allowed


def test_rbac_is_one_account_per_role_each_with_only_what_its_code_calls(
        rendered: dict[str, list[dict]]) -> None:
    every_kind = {d["kind"] for docs in rendered.values() for d in docs}
    assert not {"ClusterRole", "ClusterRoleBinding"} & every_kind
    docs = rendered["platform"]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert set(accounts) == {WORKER_ACCOUNT, FLOW_RUN_ACCOUNT, RAY_ACCOUNT}
    assert accounts[RAY_ACCOUNT].get("automountServiceAccountToken") is False
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    assert set(roles) == set(NEEDED), "one Role per account that calls the API; none for Ray"
    for account, needed in NEEDED.items():
        granted = _granted(roles[account])
        assert sorted(needed - granted) == [], f"{account} lacks what its code calls"
        assert sorted(granted - needed) == [], f"{account}'s Role allows more than its code calls"
        binding = _one(docs, "RoleBinding", account)
        namespace = binding["metadata"]["namespace"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": account}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                        "namespace": namespace}]
    # no account reads Secrets or creates Pods itself
    for role in roles.values():
        for group, resource, verb in _granted(role):
            assert resource not in ("secrets", "pods/exec", "pods/attach", "serviceaccounts/token")
            assert not (resource == "pods" and verb in ("create", "update", "patch", "delete"))
    # the comment on each rule names the code that calls it
    for name in ("prefect-worker.yaml", "flow-run.yaml"):
        text = (K8S / "rbac" / name).read_text()
        for rule in yaml.safe_load_all(text):
            if rule and rule["kind"] == "Role":
                assert text.count("\n  # ") >= len(rule["rules"]), name
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {_one(docs, "Namespace")["metadata"]["name"]}


def test_every_pod_runs_as_its_roles_account_and_ray_pods_carry_no_token(
        rendered: dict[str, list[dict]]) -> None:
    platform = rendered["platform"]
    worker = _one(platform, "Deployment", "vatt-prefect-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == WORKER_ACCOUNT
    assert _flow_run_job(rendered)["spec"]["template"]["spec"]["serviceAccountName"] == \
        FLOW_RUN_ACCOUNT
    for name in ("vatt-prefect-server", "vatt-prefect-postgres"):  # they call no API
        [doc] = [d for d in platform if d["metadata"]["name"] == name
                 and d["kind"] in ("Deployment", "StatefulSet")]
        assert doc["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, name
    ray_pods = [(where, template) for target in RAY_JOB_TARGETS + ("raycluster",)
                for doc in rendered[target] if doc["kind"] in ("RayJob", "RayCluster")
                for where, template in pod_templates(doc)]
    assert len(ray_pods) >= 14
    for where, template in ray_pods:
        spec = template["spec"]
        if where == "RayCluster/vatt-sweep head":
            # the autoscaler sidecar in the head calls the API (pods, the RayCluster) as the
            # account KubeRay makes for the cluster with the Role it needs
            assert "serviceAccountName" not in spec, where
            continue
        assert spec.get("serviceAccountName") == RAY_ACCOUNT, where
        assert spec.get("automountServiceAccountToken") is False, where


# ---------------------------------------------------------------------------------------------
# Prefect


def test_prefect_server_uses_postgres_with_the_password_from_its_secret(
        rendered: dict[str, list[dict]]) -> None:
    docs = rendered["prefect"]
    database = _one(docs, "StatefulSet", "vatt-prefect-postgres")
    service = _one(docs, "Service", database["spec"]["serviceName"])
    assert database["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    port = service["spec"]["ports"][0]["port"]
    db_env = {e["name"]: e for e in database["spec"]["template"]["spec"]["containers"][0]["env"]}
    password = {"secretKeyRef": {"name": "vatt-prefect-postgres", "key": "password"}}
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"] == password

    server = _one(docs, "Deployment", "vatt-prefect-server")["spec"]["template"]["spec"]["containers"][0]
    env = [e["name"] for e in server["env"]]
    by_name = {e["name"]: e for e in server["env"]}
    url = by_name["PREFECT_API_DATABASE_CONNECTION_URL"]["value"]
    match = re.fullmatch(r"postgresql\+asyncpg://(\w+):\$\((\w+)\)@([\w-]+):(\d+)/(\w+)", url)
    assert match, url
    user, password_var, host, url_port, database_name = match.groups()
    assert (user, database_name) == (db_env["POSTGRES_USER"]["value"], db_env["POSTGRES_DB"]["value"])
    assert (host, int(url_port)) == (service["metadata"]["name"], port)
    # Kubernetes expands $(VAR) only from variables defined before it
    assert by_name[password_var]["valueFrom"] == password
    assert env.index(password_var) < env.index("PREFECT_API_DATABASE_CONNECTION_URL")


def test_prefect_worker_serves_the_pool_with_this_image_and_account(
        rendered: dict[str, list[dict]]) -> None:
    docs = rendered["prefect"]
    worker = _one(docs, "Deployment", "vatt-prefect-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == WORKER_ACCOUNT
    command = " ".join(worker["containers"][0]["command"])
    assert "prefect worker start --pool vatt-k8s --type kubernetes" in command
    server = _one(docs, "Service", "vatt-prefect-server")
    api_url = f"http://{server['metadata']['name']}:{server['spec']['ports'][0]['port']}/api"
    init = worker["initContainers"][0]
    for container in (init, worker["containers"][0]):
        env = {e["name"]: e for e in container["env"]}
        assert env["PREFECT_API_URL"]["value"] == api_url
    worker_env = {e["name"]: e for e in worker["containers"][0]["env"]}
    assert worker_env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}  # not cluster-wide: the Role is namespaced
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["VATT_IMAGE"]["value"] == worker["containers"][0]["image"] == _images()["vatt"]
    assert "prefect work-pool create vatt-k8s --type kubernetes --overwrite" in init["command"][-1]


def test_base_job_template_is_one_prefect_accepts_and_renders_a_valid_job(
        rendered: dict[str, list[dict]]) -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    template = _base_job_template(rendered)
    WorkPoolCreate(name="vatt-k8s", type="kubernetes", base_job_template=template)  # Prefect's check
    variables = template["variables"]
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.validate(defaults, variables)
    assert defaults["service_account_name"] == FLOW_RUN_ACCOUNT

    job = _flow_run_job(rendered)
    assert validate(job) == []
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FLOW_RUN_ACCOUNT
    assert pod["containers"][0]["image"] == _images()["vatt"]
    assert job["metadata"]["namespace"] == _one(rendered["platform"], "Deployment",
                                                "vatt-prefect-worker")["metadata"]["namespace"]

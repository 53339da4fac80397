"""The test Kubernetes API server (tests/kube.py, fixture `kube_api`) is what the k8s/ tests
assume: a 1.20 server over verified TLS, RBAC that refuses what no binding grants and allows
what a RoleBinding to a ServiceAccount grants its token, and KubeRay's RayJob CRD served with
its status subresource and its schema enforced."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kube import NAMESPACE, KubeAPI

WORKER = f"system:serviceaccount:{NAMESPACE}:vatt-flow-run"
NOPERM = f"system:serviceaccount:{NAMESPACE}:vatt-noperm"
RBAC_PROPAGATION_S = 15.0  # RBAC reads bindings from an informer: a new one applies within ms


def _ray_job(name: str, **spec) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name},
            "spec": {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": {"headGroupSpec": {
                "rayStartParams": {}, "template": {"spec": {"containers": [
                    {"name": "ray-head", "image": "rayproject/ray:2.9.0"}]}}}}, **spec}}


def _status(err: ApiException) -> str:
    return f"{err.status} {err.reason}: {err.body}"


def test_version_is_1_20_over_verified_tls(kube_api: KubeAPI):
    context = ssl.create_default_context(cafile=str(kube_api.ca_file))  # hostname checked too
    with urllib.request.urlopen(f"{kube_api.url}/version", context=context, timeout=10) as response:
        version = json.load(response)
    assert (version["major"], version["minor"]) == ("1", "20"), version
    assert client.VersionApi(kube_api.api_client()).get_code().git_version.startswith("v1.20.")
    assert kube_api.url.startswith("https://127.0.0.1:")


def test_rbac_refuses_an_unbound_service_account(kube_api: KubeAPI):
    admin = client.CoreV1Api(kube_api.api_client())
    admin.list_namespaced_pod(NAMESPACE)  # system:masters may
    noperm = client.CoreV1Api(kube_api.api_client(kube_api.tokens[NOPERM]))
    with pytest.raises(ApiException) as refused:
        noperm.list_namespaced_pod(NAMESPACE)
    assert refused.value.status == 403, _status(refused.value)
    assert NOPERM in refused.value.body  # the server knows who asked: the token authenticated
    bad_token = client.CoreV1Api(kube_api.api_client("not-a-token"))
    with pytest.raises(ApiException) as unauthenticated:
        bad_token.list_namespaced_pod(NAMESPACE)
    assert unauthenticated.value.status == 401, _status(unauthenticated.value)


def test_a_role_bound_to_a_service_account_grants_its_token_exactly_that(kube_api: KubeAPI):
    admin_core = client.CoreV1Api(kube_api.api_client())
    admin_rbac = client.RbacAuthorizationV1Api(kube_api.api_client())
    worker = client.CoreV1Api(kube_api.api_client(kube_api.tokens[WORKER]))
    role = f"pod-lister-{uuid.uuid4().hex[:6]}"
    try:  # the account object, as a deployment creates it (its token is in the token file)
        admin_core.create_namespaced_service_account(NAMESPACE,
                                                     {"metadata": {"name": "vatt-flow-run"}})
        created_account = True
    except ApiException as err:
        if err.status != 409:  # another test of the session made it: keep it
            raise
        created_account = False
    try:
        admin_rbac.create_namespaced_role(NAMESPACE, {
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
        with pytest.raises(ApiException) as before:  # nothing granted yet
            worker.list_namespaced_pod(NAMESPACE)
        assert before.value.status == 403, _status(before.value)
        admin_rbac.create_namespaced_role_binding(NAMESPACE, {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "vatt-flow-run",
                          "namespace": NAMESPACE}]})

        deadline = time.monotonic() + RBAC_PROPAGATION_S
        while True:
            try:
                worker.list_namespaced_pod(NAMESPACE)
                break
            except ApiException as err:
                if err.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        # exactly that verb, that resource, that namespace; and only for that account
        can_i = {(verb, resource, namespace): kube_api.kubectl(
                     "auth", "can-i", verb, resource, "-n", namespace,
                     token=kube_api.tokens[WORKER], check=False).stdout.strip()
                 for verb, resource, namespace in [("list", "pods", NAMESPACE),
                                                   ("get", "pods", NAMESPACE),
                                                   ("create", "pods", NAMESPACE),
                                                   ("list", "secrets", NAMESPACE),
                                                   ("list", "pods", "default")]}
        assert can_i == {("list", "pods", NAMESPACE): "yes", ("get", "pods", NAMESPACE): "no",
                         ("create", "pods", NAMESPACE): "no", ("list", "secrets", NAMESPACE): "no",
                         ("list", "pods", "default"): "no"}
        with pytest.raises(ApiException) as other_namespace:
            worker.list_namespaced_pod("default")
        assert other_namespace.value.status == 403, _status(other_namespace.value)
        noperm = client.CoreV1Api(kube_api.api_client(kube_api.tokens[NOPERM]))
        with pytest.raises(ApiException) as other_account:
            noperm.list_namespaced_pod(NAMESPACE)
        assert other_account.value.status == 403, _status(other_account.value)
    finally:  # the server is shared by the session: leave vatt-flow-run without rights again
        deletes = [(admin_rbac.delete_namespaced_role_binding, role),
                   (admin_rbac.delete_namespaced_role, role)]
        if created_account:
            deletes.append((admin_core.delete_namespaced_service_account, "vatt-flow-run"))
        for delete, name in deletes:
            try:
                delete(name, NAMESPACE)
            except ApiException as err:
                if err.status != 404:
                    raise


def test_a_ray_job_is_stored_and_its_status_written_through_the_subresource(kube_api: KubeAPI):
    api = client.CustomObjectsApi(kube_api.api_client())
    name = f"job-{uuid.uuid4().hex[:6]}"
    # a status sent with the object is dropped: status is a subresource
    sent = {**_ray_job(name), "status": {"jobStatus": "SUCCEEDED"}}
    created = api.create_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs", sent)
    try:
        assert created["spec"]["entrypoint"] == "python -c 'print(1)'"
        assert "jobStatus" not in created.get("status", {}), created.get("status")
        assert created["spec"]["backoffLimit"] == 0  # the schema's default was applied

        # as the operator does: a merge patch on .../rayjobs/<name>/status
        status = {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running",
                  "rayClusterName": f"{name}-raycluster"}
        api.patch_namespaced_custom_object_status("ray.io", "v1", NAMESPACE, "rayjobs", name,
                                                  {"status": status})
        read = api.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs", name)
        assert read["status"] == {**status, "failed": 0, "succeeded": 0}  # + the schema's defaults
        # and the main resource cannot write status
        api.patch_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs", name,
                                           {"status": {"jobStatus": "FAILED"}})
        read = api.get_namespaced_custom_object_status("ray.io", "v1", NAMESPACE, "rayjobs", name)
        assert read["status"]["jobStatus"] == "RUNNING"
        listed = json.loads(kube_api.kubectl("get", "rayjobs", "-o", "json").stdout)["items"]
        assert [item["metadata"]["name"] for item in listed].count(name) == 1
    finally:
        api.delete_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs", name)


def test_a_ray_job_that_breaks_the_crd_schema_is_rejected(kube_api: KubeAPI):
    api = client.CustomObjectsApi(kube_api.api_client())
    with pytest.raises(ApiException) as rejected:
        api.create_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs",
                                            _ray_job("job-invalid", backoffLimit="x"))
    assert rejected.value.status == 422, _status(rejected.value)
    assert "spec.backoffLimit" in rejected.value.body, rejected.value.body


def test_ray_clusters_are_served_too(kube_api: KubeAPI):
    api = client.CustomObjectsApi(kube_api.api_client())
    listed = api.list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayclusters")
    assert listed["kind"] == "RayClusterList" and isinstance(listed["items"], list)

"""The Pod Security Standard `restricted` (Kubernetes 1.30's, the version k8s/namespace pins), as
the PodSecurity admission controller checks a pod: every check of the `baseline` profile and the
`restricted` profile's own, over the pod's containers, init containers and ephemeral containers.

The test cluster (kube-apiserver 1.20, tests/kube.py) predates the PodSecurity admission (beta in
1.23), so the tests play it with this function on every pod template the platform ships and on
every pod created in the cluster in a box. `violations(pod_spec)` returns what the admission
controller would refuse, one line each, e.g.

    'container "ray-worker": allowPrivilegeEscalation != false'

The checks follow https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the
field lists of each control); the pod's metadata annotations are only needed for AppArmor.
"""

from __future__ import annotations

from typing import Any, Iterator

# the one capability a container may add (baseline allows a few more; restricted only this)
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}
APPARMOR_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f'container "{container.get("name", "?")}"', container


def violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """What the `restricted` profile refuses in the pod spec `spec` (empty: it passes)."""
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    annotations = annotations or {}

    # -- baseline ---------------------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"pod: {field}=true")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("pod: windowsOptions.hostProcess=true")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"pod: sysctl {sysctl.get('name')} is not a safe sysctl")
    for key, value in annotations.items():
        if key.startswith(APPARMOR_PREFIX) and not (value == "runtime/default"
                                                    or value.startswith("localhost/")):
            found.append(f"pod: AppArmor profile {value!r} for {key[len(APPARMOR_PREFIX):]}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            found.append(f'volume "{volume.get("name")}": hostPath')
        # -- restricted: volume types
        for kind in kinds - RESTRICTED_VOLUMES - {"hostPath"}:
            found.append(f'volume "{volume.get("name")}": type {kind} is not allowed')

    def check_context(where: str, context: dict[str, Any]) -> None:
        se_linux = context.get("seLinuxOptions") or {}
        if se_linux.get("type", "") not in SELINUX_TYPES:
            found.append(f"{where}: seLinuxOptions.type={se_linux['type']}")
        if se_linux.get("user") or se_linux.get("role"):
            found.append(f"{where}: seLinuxOptions.user/role set")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_ALLOWED:
            found.append(f"{where}: seccompProfile.type={seccomp}")
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in SECCOMP_ALLOWED:
            found.append(f"{where}: appArmorProfile.type={apparmor}")
        if context.get("runAsUser") == 0:
            found.append(f"{where}: runAsUser=0")
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}: windowsOptions.hostProcess=true")

    check_context("pod", pod_sc)
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in SECCOMP_ALLOWED
    for where, container in _containers(spec):
        context = container.get("securityContext") or {}
        check_context(where, context)
        if context.get("privileged"):
            found.append(f"{where}: privileged=true")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount={context['procMount']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{where}: hostPort {port['hostPort']}")
        capabilities = context.get("capabilities") or {}
        for added in capabilities.get("add") or []:
            if added not in RESTRICTED_CAPABILITIES:
                found.append(f"{where}: adds capability {added}")
        # -- restricted ----------------------------------------------------------------------
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{where}: capabilities.drop does not include ALL")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation != false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"{where}: runAsNonRoot != true (neither the pod's nor its own)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is None and not pod_seccomp:
            found.append(f"{where}: no seccompProfile RuntimeDefault or Localhost (neither the "
                         "pod's nor its own)")
    return found


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod templates of a rendered manifest, each as (a name for messages, the template with
    its metadata and spec): Deployments, StatefulSets, Jobs, Pods, and KubeRay's RayJobs (head,
    worker groups, submitter) and RayClusters. KubeRay's autoscaler sidecar, which the operator
    adds to the head pod from `autoscalerOptions`, is added to the head's template here."""
    kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield f"Pod/{name}", {"metadata": doc.get("metadata") or {}, "spec": spec}
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield f"{kind}/{name}", spec["template"]
    elif kind == "CronJob":
        yield f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]
    elif kind == "RayJob":
        if spec.get("submitterPodTemplate"):
            yield f"RayJob/{name} submitter", spec["submitterPodTemplate"]
        yield from _ray_cluster_templates(f"RayJob/{name}", spec.get("rayClusterSpec") or {})
    elif kind == "RayCluster":
        yield from _ray_cluster_templates(f"RayCluster/{name}", spec)


def _ray_cluster_templates(where: str, spec: dict[str, Any]) -> Iterator[tuple[str, dict]]:
    head = {**spec["headGroupSpec"]["template"]}
    if spec.get("enableInTreeAutoscaling"):
        options = spec.get("autoscalerOptions") or {}
        sidecar = {"name": "autoscaler"}
        if "securityContext" in options:
            sidecar["securityContext"] = options["securityContext"]
        head["spec"] = {**head["spec"], "containers": [*head["spec"]["containers"], sidecar]}
    yield f"{where} head", head
    for group in spec.get("workerGroupSpecs") or []:
        yield f"{where} worker group {group.get('groupName')}", group["template"]


__all__ = ["violations", "pod_templates"]

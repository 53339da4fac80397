"""Ray's autoscaler v2, played for a test: what it tells the GCS about the cluster's size.

KubeRay runs Ray's autoscaler (v2) in a sidecar of the head. Newer Ray autoscalers report
their cluster config to the GCS when they start and whenever it changes
(`Autoscaler._report_cluster_config` in ray/autoscaler/v2/autoscaler.py): the
`autoscaler_pb2.ClusterConfig` of the worker groups (resources, min and max count; the head
left out), through `GcsClient.report_cluster_config`. Ray Train and Ray Data read it back with
`ray._private.state.state.get_max_resources_from_cluster_config()`, and so does
`vatt.train.preflight.cluster_capacity`. Ray 2.60's autoscaler does not make that report yet,
and no operator runs here; this script makes the same call with the message built the same way:
the RayCluster manifest through Ray's own KubeRay config reader (what the sidecar reads), each
worker group converted as the autoscaler converts it.

    python tests/autoscaler_play.py --address 127.0.0.1:6379 --ray-cluster k8s/raycluster/raycluster.yaml \
        --worker-cpus 2 --max-workers 1

It waits for the GCS to answer (RAY_AUTH_MODE / RAY_AUTH_TOKEN from the environment, as the
sidecar has them), reports, and prints one JSON line: the live nodes' CPUs at that moment and
the maximum Ray reads back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml


def cluster_config(ray_cluster: dict, worker_cpus: int, max_workers: int) -> bytes:
    """The ClusterConfig message of `ray_cluster` (a RayCluster manifest) with its one worker
    group at `worker_cpus` per node and at most `max_workers` nodes, serialized."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr)
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    ray_cluster = json.loads(json.dumps(ray_cluster))  # a copy
    ray_cluster["metadata"].setdefault("namespace", "vatt")
    (group,) = ray_cluster["spec"]["workerGroupSpecs"]
    group["rayStartParams"] = {**(group.get("rayStartParams") or {}), "num-cpus": str(worker_cpus)}
    group["maxReplicas"] = max_workers
    config = AutoscalingConfig(configs=_derive_autoscaling_config_from_ray_cr(ray_cluster),
                               skip_content_hash=True)
    message = ClusterConfig()
    for name, node_type in config.get_node_type_configs().items():
        if name == config.get_head_node_type():
            continue  # the head does not scale
        message.node_group_configs.append(NodeGroupConfig(
            name=name, resources={key: int(value) for key, value in node_type.resources.items()},
            min_count=node_type.min_worker_nodes, max_count=node_type.max_worker_nodes))
    return message.SerializeToString()


def live_node_cpus(gcs_client) -> list[float]:
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    from ray.core.generated.autoscaler_pb2 import NodeStatus

    state = get_cluster_resource_state(gcs_client)
    return [node.total_resources.get("CPU", 0.0) for node in state.node_states
            if node.status != NodeStatus.DEAD]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the GCS, host:port")
    parser.add_argument("--ray-cluster", required=True, help="a RayCluster manifest (YAML)")
    parser.add_argument("--worker-cpus", type=int, required=True)
    parser.add_argument("--max-workers", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    import ray
    from ray._raylet import GcsClient

    message = cluster_config(yaml.safe_load(Path(args.ray_cluster).read_text()),
                             args.worker_cpus, args.max_workers)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            client = GcsClient(address=args.address)
            nodes = live_node_cpus(client)
            if nodes:
                break
        except Exception as err:  # noqa: BLE001 - the GCS is starting
            if time.monotonic() > deadline:
                print(f"the GCS at {args.address} did not answer: {err}", file=sys.stderr)
                return 1
        time.sleep(0.5)
    client.report_cluster_config(message)
    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    from ray._private.state import state

    print(json.dumps({"live_node_cpus": nodes,
                      "maximum": state.get_max_resources_from_cluster_config()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

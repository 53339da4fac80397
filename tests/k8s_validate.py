"""Validate a Kubernetes object the way an API server would take it, without a cluster.

    problems = validate(doc)   # [] when valid; else one line per problem, naming the field

- RayJob and RayCluster (ray.io): against the `openAPIV3Schema` of KubeRay's CRDs in
  fixtures/kuberay-crds/ (v1.7.0), made strict: an API server prunes a field the structural schema
  does not name (and `kubectl apply --validate=strict` rejects it), so here an unknown field is a
  problem. `x-kubernetes-int-or-string` becomes "integer or string"; under
  `x-kubernetes-preserve-unknown-fields` anything goes; the object's own `metadata` is checked as
  ObjectMeta. Not checked: the CRDs' CEL rules (`x-kubernetes-validations`).
- Every other kind (ConfigMap, Secret, ServiceAccount, Role, RoleBinding, Deployment,
  StatefulSet, Service, Job, PersistentVolumeClaim, ...): kubernetes-validate's strict schemas of
  Kubernetes KUBERNETES_VERSION, which also reject unknown fields.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

CRD_DIR = Path(__file__).resolve().parent / "fixtures" / "kuberay-crds"
KUBERNETES_VERSION = "1.32"  # the kubectl of this project; GKE's oldest supported minor is near it
_DEFINITIONS = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/_definitions.json"
_OBJECT_META = ("https://kubernetes.io/api/_definitions.json"
                "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2 MB of YAML


def validate(doc: dict) -> list[str]:
    """What an API server would reject (or silently drop) in `doc`; [] when nothing."""
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        return ["not a Kubernetes object: it needs apiVersion and kind"]
    where = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '<no name>')}"
    group, _, version = doc["apiVersion"].rpartition("/")
    if (group, doc["kind"]) in _custom_validators():
        validator = _custom_validators()[(group, doc["kind"])].get(version)
        if validator is None:
            return [f"{where}: {doc['apiVersion']} is not a served version of {doc['kind']}"]
        errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
        return [f"{where}: {_field(error.absolute_path)}: {error.message}" for error in errors]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {_field(error.absolute_path)}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: {error.message}"]
    return []


def _field(path: Any) -> str:
    return ".".join(str(part) for part in path) or "<the object>"


@cache
def _custom_validators() -> dict[tuple[str, str], dict[str, jsonschema.Validator]]:
    """(group, kind) -> served version -> validator, from every CRD in CRD_DIR."""
    definitions = Resource.from_contents(schema_contents(_DEFINITIONS, KUBERNETES_VERSION))
    registry = definitions @ Registry()
    validators: dict[tuple[str, str], dict[str, jsonschema.Validator]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=_YAML_LOADER)
        names = validators.setdefault((crd["spec"]["group"], crd["spec"]["names"]["kind"]), {})
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # the API server checks an object's own metadata as ObjectMeta, whatever the CRD says
            schema["properties"]["metadata"] = {"$ref": _OBJECT_META}
            names[version["name"]] = jsonschema.Draft202012Validator(schema, registry=registry)
    return validators


def _strict(schema: dict) -> dict:
    """A CRD's OpenAPI v3 schema as a JSON Schema that rejects what the API server would prune."""
    out = {key: value for key, value in schema.items()
           if not key.startswith("x-kubernetes-") and key != "nullable"}
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_strict(sub) for sub in schema[key]]
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):  # a whole object: apiVersion, kind, metadata
        out.setdefault("properties", {})
        out["properties"].setdefault("apiVersion", {"type": "string"})
        out["properties"].setdefault("kind", {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if (out.get("type") == "object" and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False  # a field the schema does not name would be pruned
    return out

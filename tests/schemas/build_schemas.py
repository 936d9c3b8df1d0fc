"""Regenerate the vendored JSON schemas in this folder (not run by the tests).

Usage (needs the ``kubernetes-validate`` wheel from PyPI, which ships the upstream
Kubernetes OpenAPI converted to JSON Schema draft 2020-12)::

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    (cd /tmp/kv && unzip -q kubernetes_validate-1.37.0-py3-none-any.whl)
    python tests/schemas/build_schemas.py \
        /tmp/kv/kubernetes_validate/kubernetes-json-schema/v1.32.0-local-strict

Writes two files:

``kubernetes-v1.32.0-strict.json``
    The transitive closure of the core Kubernetes definitions that rsir's manifests
    use (Namespace, ConfigMap, PersistentVolumeClaim, and every type the KubeRay
    CRDs embed: PodTemplateSpec, Service, ResourceRequirements, ...). Copied verbatim
    from the "-strict" flavour (unknown fields are errors, as with
    ``kubectl apply --validate=strict``), with two edits: ``description`` keys are
    dropped (size), and ``Quantity`` strings get the pattern that the API server
    and the KubeRay CRDs enforce.

``kuberay-v1.json``
    RayCluster, RayJob and RayService (``ray.io/v1``), transcribed field by field
    from KubeRay's API types, ``ray-operator/apis/ray/v1/{raycluster,rayjob,
    rayservice}_types.go`` (the sources that controller-gen turns into the CRDs in
    ``ray-operator/config/crd/bases/ray.io_*.yaml``), with controller-gen's rules:
    a field is required unless it is ``omitempty`` or ``+optional``; int32 is an
    integer; ``map[string]string`` an object of strings; ``+kubebuilder:validation:
    Enum`` an enum (and the CEL "self in [...]" rules an enum too); every corev1
    type is a ``$ref`` into the Kubernetes file above (the CRD inlines the same Go
    types). ``status`` is left open: users never write it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
K8S_VERSION = "v1.32.0"
K8S_FILE = f"kubernetes-{K8S_VERSION}-strict.json"
K8S_ID = f"https://rsir.invalid/schemas/{K8S_FILE}"
KUBERAY_ID = "https://rsir.invalid/schemas/kuberay-v1.json"
KUBERAY_COMMITS = {
    "raycluster_types.go": "3275ee09f6a6c899c37e82ea6349785536de6bd4",
    "rayjob_types.go": "f6ef3f7b32639dc6555797512d7cb784bd436901",
    "rayservice_types.go": "007412988d067642eeb67f8b80c373fc9ab401dd",
}

CORE = "io.k8s.api.core.v1."
META = "io.k8s.apimachinery.pkg.apis.meta.v1."
# Roots of the closure: what the manifests use directly and what the KubeRay types embed.
K8S_ROOTS = [
    CORE + "Namespace",
    CORE + "ConfigMap",
    CORE + "PersistentVolumeClaim",
    CORE + "PodTemplateSpec",
    CORE + "Service",
    CORE + "ResourceRequirements",
    CORE + "EnvVar",
    CORE + "EnvVarSource",
    CORE + "EnvFromSource",
    CORE + "VolumeMount",
    CORE + "SecurityContext",
    META + "ObjectMeta",
]
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out.add(ref[len("#/$defs/"):])
        for v in node.values():
            _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)


def build_k8s(src: Path) -> dict:
    defs = json.loads((src / "_definitions.json").read_text())["$defs"]
    keep: dict[str, dict] = {}
    todo = list(K8S_ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = _strip(defs[name])
        found: set[str] = set()
        _refs(keep[name], found)
        todo.extend(sorted(found - keep.keys()))
    keep[QUANTITY] = {
        "oneOf": [
            {"type": ["string", "null"], "pattern": QUANTITY_PATTERN},
            {"type": ["number", "null"]},
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": K8S_ID,
        "$comment": (
            f"Subset of Kubernetes {K8S_VERSION} OpenAPI definitions (strict), from the "
            "kubernetes-validate 1.37.0 wheel on PyPI; descriptions stripped; Quantity "
            "strings patterned. Regenerate with build_schemas.py."
        ),
        "$defs": dict(sorted(keep.items())),
    }


# --- KubeRay ---------------------------------------------------------------------------

def core(name: str) -> dict:
    return {"$ref": f"{K8S_FILE}#/$defs/{CORE}{name}"}


STR = {"type": "string"}
BOOL = {"type": "boolean"}
INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
INT64 = {"type": "integer", "format": "int64"}
FLOAT = {"type": "number"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
STRLIST = {"type": "array", "items": {"type": "string"}}
OPEN = {"type": "object"}
MANAGED_BY = {"type": "string", "enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]}


def obj(properties: dict, required: list[str] = ()) -> dict:
    out = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = sorted(required)
    return out


def ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def top(kind: str, spec: str) -> dict:
    return obj(
        {
            "apiVersion": {"type": "string", "enum": ["ray.io/v1"]},
            "kind": {"type": "string", "enum": [kind]},
            "metadata": {"$ref": f"{K8S_FILE}#/$defs/{META}ObjectMeta"},
            "spec": ref(spec),
            "status": OPEN,
        },
        ["apiVersion", "kind", "metadata"],
    )


def build_kuberay() -> dict:
    defs = {
        # raycluster_types.go
        "RayClusterSpec": obj(
            {
                "suspend": BOOL,
                "managedBy": MANAGED_BY,
                "autoscalerOptions": ref("AutoscalerOptions"),
                "headServiceAnnotations": STRMAP,
                "enableInTreeAutoscaling": BOOL,
                "gcsFaultToleranceOptions": ref("GcsFaultToleranceOptions"),
                "headGroupSpec": ref("HeadGroupSpec"),
                "rayVersion": STR,
                "workerGroupSpecs": {"type": "array", "items": ref("WorkerGroupSpec")},
            },
            ["headGroupSpec"],
        ),
        "GcsFaultToleranceOptions": obj(
            {
                "redisUsername": ref("RedisCredential"),
                "redisPassword": ref("RedisCredential"),
                "externalStorageNamespace": STR,
                "redisAddress": STR,
            },
            ["redisAddress"],
        ),
        "RedisCredential": obj({"valueFrom": core("EnvVarSource"), "value": STR}),
        "HeadGroupSpec": obj(
            {
                "template": core("PodTemplateSpec"),
                "headService": core("Service"),
                "enableIngress": BOOL,
                "rayStartParams": STRMAP,
                "serviceType": STR,
            },
            ["template", "rayStartParams"],
        ),
        "WorkerGroupSpec": obj(
            {
                "suspend": BOOL,
                "groupName": STR,
                "replicas": INT32,
                "minReplicas": INT32,
                "maxReplicas": INT32,
                "idleTimeoutSeconds": INT32,
                "rayStartParams": STRMAP,
                "template": core("PodTemplateSpec"),
                "scaleStrategy": obj({"workersToDelete": STRLIST}),
                "numOfHosts": INT32,
            },
            ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
        ),
        "AutoscalerOptions": obj(
            {
                "resources": core("ResourceRequirements"),
                "image": STR,
                "imagePullPolicy": STR,
                "securityContext": core("SecurityContext"),
                "idleTimeoutSeconds": INT32,
                "upscalingMode": {"type": "string",
                                  "enum": ["Default", "Aggressive", "Conservative"]},
                "env": {"type": "array", "items": core("EnvVar")},
                "envFrom": {"type": "array", "items": core("EnvFromSource")},
                "volumeMounts": {"type": "array", "items": core("VolumeMount")},
            }
        ),
        # rayjob_types.go
        "RayJobSpec": obj(
            {
                "activeDeadlineSeconds": INT32,
                "backoffLimit": INT32,
                "rayClusterSpec": ref("RayClusterSpec"),
                "submitterPodTemplate": core("PodTemplateSpec"),
                "metadata": STRMAP,
                "clusterSelector": STRMAP,
                "submitterConfig": obj({"backoffLimit": INT32}),
                "managedBy": MANAGED_BY,
                "deletionPolicy": {"type": "string", "enum": [
                    "DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]},
                "entrypoint": STR,
                "runtimeEnvYAML": STR,
                "jobId": STR,
                "submissionMode": {"type": "string",
                                   "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "entrypointResources": STR,
                "entrypointNumCpus": FLOAT,
                "entrypointNumGpus": FLOAT,
                "ttlSecondsAfterFinished": INT32,
                "shutdownAfterJobFinishes": BOOL,
                "suspend": BOOL,
            }
        ),
        # rayservice_types.go
        "RayServiceSpec": obj(
            {
                "serveConfigV2": STR,
                "rayClusterConfig": ref("RayClusterSpec"),
                "serviceUnhealthySecondThreshold": INT32,
                "deploymentUnhealthySecondThreshold": INT32,
                "serveService": core("Service"),
            }
        ),
    }
    defs["RayCluster"] = top("RayCluster", "RayClusterSpec")
    defs["RayJob"] = top("RayJob", "RayJobSpec")
    defs["RayService"] = top("RayService", "RayServiceSpec")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": KUBERAY_ID,
        "$comment": (
            "KubeRay ray.io/v1 RayCluster, RayJob, RayService spec schemas transcribed "
            "from ray-project/kuberay ray-operator/apis/ray/v1/*_types.go at "
            + ", ".join(f"{k}@{v[:10]}" for k, v in KUBERAY_COMMITS.items())
            + " (KubeRay v1.3 API line); corev1 types refer to " + K8S_FILE
            + ". Regenerate with build_schemas.py."
        ),
        "$defs": defs,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    k8s = build_k8s(Path(argv[0]))
    (HERE / K8S_FILE).write_text(json.dumps(k8s, separators=(",", ":"), sort_keys=True) + "\n")
    (HERE / "kuberay-v1.json").write_text(json.dumps(build_kuberay(), indent=1) + "\n")
    for name in (K8S_FILE, "kuberay-v1.json"):
        print(name, (HERE / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()

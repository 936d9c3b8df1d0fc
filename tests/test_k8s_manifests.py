"""Container image, KubeRay manifests and job submission (issue 9).

Offline checks of ``k8s/`` and the ``Dockerfile``:

* every kustomization (base and both overlays) is rendered by ``render`` below, a small
  renderer for the subset of kustomize used in ``k8s/`` (resources, namespace, labels,
  images, JSON 6902 patches with targets); when ``kubectl`` or ``kustomize`` is on PATH
  its output is compared with the real thing;
* every rendered object is validated against the vendored JSON schemas in
  ``tests/schemas/`` (KubeRay ``ray.io/v1`` RayCluster/RayJob/RayService and core
  Kubernetes v1.32 kinds; see ``tests/schemas/README.md``);
* every entrypoint, recipe, override key, serve import path and image reference is
  checked against the repository (jobs/*.py, configs/*.yaml, rsir.config, Dockerfile);
* the two overlays differ exactly where intended.

``test_train_job_through_jobs_api`` (slow, ray) starts its own single-node cluster with
``ray start --head --block`` on loopback (separate ``--temp-dir`` and ports, so it
neither sees nor disturbs the session's ``ray_session``), submits ``jobs/train.py``
through the Ray Jobs API with ``working_dir`` + ``py_modules`` (exactly the
development path of k8s/README.md) and reads the run's metrics.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from rsir.serve.fixture import free_ports

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "cpu-dev": K8S / "overlays" / "cpu-dev",
    "gpu-prod": K8S / "overlays" / "gpu-prod",
}
NAMESPACE = "rsir"
STORAGE_MOUNT = "/mnt/rsir"
# The job -> recipe contract of issue 9.
JOB_RECIPES = {
    "train": "configs/levircc_tff.yaml",
    "tune": "configs/tune_weicom.yaml",
    "index": "configs/levircc_tff.yaml",
    "evaluate": "configs/levircc_tff.yaml",
}
SERVE_IMPORT_PATH = "rsir.serve.app:build_app_from_config"
SERVE_CONFIG = "configs/serve.yaml"
A100 = "NVIDIA-A100-SXM4-80GB"
# Where the cpu-dev overlay mounts the developer's checkout (kind extraMounts / minikube mount).
DEV_SOURCE = "/src/rsir"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _version() -> str:
    return _pyproject()["project"]["version"]


def _ray_pin() -> str:
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==(\S+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml pins no ray==<version>")


# ---------------------------------------------------------------------------------------
# A small kustomize renderer
# ---------------------------------------------------------------------------------------
# Supported kustomization fields (anything else is an error, so the subset cannot grow
# silently): resources (files, or directories holding a kustomization.yaml), namespace,
# labels (pairs on metadata.labels only), images (name/newName/newTag/digest; every
# `containers` / `initContainers` list anywhere in an object, as kustomize does for
# CRDs), patches (JSON 6902 operation lists, from `path` or inline `patch`, applied to
# every object that matches `target` {group, version, kind, name (a regex)}).
# Transformer order follows kustomize: resources, patches, namespace, labels, images.

class KustomizeError(ValueError):
    pass


SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images",
                    "patches"}
CLUSTER_SCOPED_KINDS = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                        "ClusterRoleBinding", "CustomResourceDefinition"}


def _obj_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""),
            meta.get("name", ""))


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk_to_parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KustomizeError(f"{path}: no index {part}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                raise KustomizeError(f"{path}: no key {part!r}")
            node = node[part]
        else:
            raise KustomizeError(f"{path}: cannot descend into a scalar at {part!r}")
    return node


def apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / remove / replace / test, in place."""
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if kind not in ("add", "remove", "replace", "test") or not isinstance(path, str):
            raise KustomizeError(f"unsupported JSON 6902 operation {op!r}")
        parts = _pointer(path)
        if not parts:
            raise KustomizeError("operations on the whole document are not supported")
        parent, last = _walk_to_parent(doc, parts, path), parts[-1]
        value = copy.deepcopy(op.get("value"))
        if isinstance(parent, list):
            if kind == "add" and last == "-":
                parent.append(value)
                continue
            if not last.isdigit():
                raise KustomizeError(f"{path}: list index expected")
            i = int(last)
            if kind == "add":
                if i > len(parent):
                    raise KustomizeError(f"{path}: index out of range")
                parent.insert(i, value)
                continue
            if i >= len(parent):
                raise KustomizeError(f"{path}: index out of range")
            if kind == "remove":
                del parent[i]
            elif kind == "replace":
                parent[i] = value
            elif parent[i] != value:
                raise KustomizeError(f"test failed at {path}")
        elif isinstance(parent, dict):
            if kind == "add":
                parent[last] = value
                continue
            if last not in parent:
                raise KustomizeError(f"{path}: no key {last!r} to {kind}")
            if kind == "remove":
                del parent[last]
            elif kind == "replace":
                parent[last] = value
            elif parent[last] != value:
                raise KustomizeError(f"test failed at {path}")
        else:
            raise KustomizeError(f"{path}: parent is a scalar")


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    if "group" in target and target["group"] != group:
        return False
    if "version" in target and target["version"] != version:
        return False
    if "kind" in target and target["kind"] != obj.get("kind"):
        return False
    return "name" not in target or bool(re.fullmatch(target["name"], obj["metadata"]["name"]))


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    name, digest = (image.split("@", 1) + [None])[:2] if "@" in image else (image, None)
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _set_images(node: Any, rules: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _retag(container["image"], rules)
            _set_images(value, rules)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, rules)


def _retag(image: str, rules: list[dict[str, Any]]) -> str:
    name, tag, digest = _split_image(image)
    for rule in rules:
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise KustomizeError(f"unsupported images fields {sorted(unknown)}")
        if rule["name"] != name:
            continue
        name = rule.get("newName", name)
        if "newTag" in rule:
            tag, digest = str(rule["newTag"]), None
        if "digest" in rule:
            tag, digest = None, rule["digest"]
        break
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: not a Kubernetes object: {d!r:.80}")
    return docs


def render(directory: Path) -> list[dict[str, Any]]:
    """Render ``directory``/kustomization.yaml (see the supported subset above)."""
    kfile = directory / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: fields not supported by this renderer: {sorted(unknown)}")
    if spec.get("kind") != "Kustomization":
        raise KustomizeError(f"{kfile}: kind must be Kustomization")
    objs: list[dict[str, Any]] = []
    for res in spec.get("resources", []):
        path = (directory / res).resolve()
        objs.extend(render(path) if path.is_dir() else _load_yaml_docs(path))
    ids = [_obj_id(o) for o in objs]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise KustomizeError(f"{kfile}: duplicate objects {sorted(dupes)}")
    for patch in spec.get("patches", []):
        if ("path" in patch) == ("patch" in patch):
            raise KustomizeError(f"{kfile}: a patch needs exactly one of path / patch")
        text = (directory / patch["path"]).read_text(encoding="utf-8") if "path" in patch \
            else patch["patch"]
        ops = yaml.safe_load(text)
        if not isinstance(ops, list):
            raise KustomizeError(f"{kfile}: only JSON 6902 patches are supported: {patch}")
        if "target" not in patch:
            raise KustomizeError(f"{kfile}: a JSON 6902 patch needs a target: {patch}")
        hits = [o for o in objs if _matches(o, patch["target"])]
        if not hits:
            raise KustomizeError(f"{kfile}: patch target matches nothing: {patch['target']}")
        for obj in hits:
            apply_json6902(obj, ops)
    if "namespace" in spec:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        if set(label) - {"pairs", "includeSelectors", "includeTemplates"} or \
                label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{kfile}: only labels with pairs on metadata are supported")
        for obj in objs:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    if spec.get("images"):
        for obj in objs:
            _set_images(obj, spec["images"])
    return objs


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    """The rendered objects of one kustomization (cached; callers get a deep copy)."""
    if name not in _RENDERED:
        _RENDERED[name] = render(KUSTOMIZATIONS[name])
    return copy.deepcopy(_RENDERED[name])


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod template) of every Ray pod of a RayCluster / RayService."""
    spec = obj["spec"] if obj["kind"] == "RayCluster" else obj["spec"]["rayClusterConfig"]
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def ray_cluster_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, obj in by_kind(objs, "RayCluster").items():
        yield f"RayCluster/{name}", obj["spec"]
    for name, obj in by_kind(objs, "RayService").items():
        yield f"RayService/{name}", obj["spec"]["rayClusterConfig"]


def containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            yield from containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers(value)


# ---------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------

K8S_SCHEMA_FILE = SCHEMAS / "kubernetes-v1.32.0-strict.json"
KUBERAY_SCHEMA_FILE = SCHEMAS / "kuberay-v1.json"
CORE = "io.k8s.api.core.v1."
SCHEMA_FOR = {  # (apiVersion, kind) -> (file, $defs name)
    ("v1", "Namespace"): (K8S_SCHEMA_FILE, CORE + "Namespace"),
    ("v1", "ConfigMap"): (K8S_SCHEMA_FILE, CORE + "ConfigMap"),
    ("v1", "PersistentVolumeClaim"): (K8S_SCHEMA_FILE, CORE + "PersistentVolumeClaim"),
    ("ray.io/v1", "RayCluster"): (KUBERAY_SCHEMA_FILE, "RayCluster"),
    ("ray.io/v1", "RayJob"): (KUBERAY_SCHEMA_FILE, "RayJob"),
    ("ray.io/v1", "RayService"): (KUBERAY_SCHEMA_FILE, "RayService"),
}


@pytest.fixture(scope="module")
def validate():
    """``validate(obj)`` -> sorted list of schema error strings (empty when valid)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    docs = {p: json.loads(p.read_text(encoding="utf-8"))
            for p in (K8S_SCHEMA_FILE, KUBERAY_SCHEMA_FILE)}
    registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in docs.values()
    )
    validators: dict[tuple[str, str], Any] = {}
    for key, (path, name) in SCHEMA_FOR.items():
        schema = {"$ref": f"{docs[path]['$id']}#/$defs/{name}"}
        Draft202012Validator.check_schema(docs[path])
        validators[key] = Draft202012Validator(schema, registry=registry)

    def _validate(obj: dict[str, Any]) -> list[str]:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key not in validators:
            return [f"no vendored schema for apiVersion/kind {key}"]
        return sorted(
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validators[key].iter_errors(obj)
        )

    return _validate


def test_vendored_schemas_are_small_and_labelled():
    files = sorted(p for p in SCHEMAS.glob("*.json"))
    assert {p.name for p in files} == {K8S_SCHEMA_FILE.name, KUBERAY_SCHEMA_FILE.name}
    assert sum(p.stat().st_size for p in files) < 1_000_000
    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["$schema"].endswith("2020-12/schema")
        assert "$comment" in doc and "build_schemas.py" in doc["$comment"], path
    readme = (SCHEMAS / "README.md").read_text(encoding="utf-8")
    assert "kubernetes-validate" in readme and "ray-project/kuberay" in readme


def _good_cluster() -> dict[str, Any]:
    return by_kind(rendered("gpu-prod"), "RayCluster")["rsir"]


MISTAKES = {
    # A typo in a KubeRay field, in a pod field, a bad quantity, a wrong type, a missing
    # required field, an enum value KubeRay does not know: each must be caught.
    "ray-field-typo": lambda o: o["spec"].__setitem__("enableInTreeAutoscalling", True),
    "pod-field-typo": lambda o: o["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    .__setitem__("nodeSelectr", {"a": "b"}),
    "bad-quantity": lambda o: o["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ["resources"]["limits"].__setitem__("memory", "16 GB"),
    "wrong-type": lambda o: o["spec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", "16"),
    "missing-required": lambda o: o["spec"]["workerGroupSpecs"][0].pop("groupName"),
    "missing-template": lambda o: o["spec"]["headGroupSpec"].pop("template"),
    "bad-enum": lambda o: o["spec"]["autoscalerOptions"].__setitem__("upscalingMode", "Fast"),
    "bad-api-version": lambda o: o.__setitem__("apiVersion", "ray.io/v1alpha2"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_schemas_reject_mistakes(validate, mistake):
    obj = _good_cluster()
    assert validate(obj) == []
    MISTAKES[mistake](obj)
    assert validate(obj), f"the schema accepted the {mistake} mistake"


# ---------------------------------------------------------------------------------------
# Rendering and validation
# ---------------------------------------------------------------------------------------

EXPECTED_OBJECTS = {
    ("Namespace", NAMESPACE), ("PersistentVolumeClaim", "rsir-shared"),
    ("ConfigMap", "rsir-env"), ("RayCluster", "rsir"), ("RayJob", "rsir-train"),
    ("RayJob", "rsir-tune"), ("RayJob", "rsir-index"), ("RayJob", "rsir-evaluate"),
    ("RayService", "rsir-serve"),
}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_render_and_validate(validate, name):
    objs = rendered(name)
    assert {(o["kind"], o["metadata"]["name"]) for o in objs} == EXPECTED_OBJECTS
    errors = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in objs}
    assert {k: v for k, v in errors.items() if v} == {}
    for obj in objs:
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "rsir"
        # k8s/README.md applies the platform, each job and the endpoint separately with
        # `kubectl apply -k <overlay> -l <selector>`: these labels are that interface.
        component = {"RayJob": "job", "RayService": "serve"}.get(obj["kind"], "platform")
        assert meta["labels"]["app.kubernetes.io/component"] == component, obj["kind"]
        if obj["kind"] == "RayJob":
            assert meta["name"] == f"rsir-{meta['labels']['rsir/job']}"
        if obj["kind"] == "Namespace":
            assert "namespace" not in meta
        else:
            assert meta["namespace"] == NAMESPACE, obj["kind"]


def _kustomize_cli() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _canonical(objs: list[dict[str, Any]]) -> dict[tuple[str, ...], str]:
    return {_obj_id(o): json.dumps(o, sort_keys=True) for o in objs}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_renderer_matches_kustomize_binary(name):
    cli = _kustomize_cli()
    if cli is None:
        pytest.skip("neither kustomize nor kubectl on PATH (the built-in renderer is used)")
    try:
        out = subprocess.run([*cli, str(KUSTOMIZATIONS[name])], capture_output=True,
                             text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{cli[0]} did not answer within 120 s")
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    assert _canonical(rendered(name)) == _canonical(theirs)


# ---------------------------------------------------------------------------------------
# Jobs, recipes, serve config
# ---------------------------------------------------------------------------------------

def _check_overrides(recipe: Path, overrides: list[str]) -> None:
    """Every key.path=value override must name a real key of the recipe."""
    from rsir.config import ConfigError, RecipeConfig, load_config, load_yaml

    try:
        load_config(recipe, [])
    except ConfigError:
        # Not a RecipeConfig (e.g. a tuning spec): every override must replace a key the
        # YAML already has, under a section it already has.
        data = load_yaml(recipe)
        for text in overrides:
            key = text.split("=", 1)[0].split(".")
            node: Any = data
            for part in key:
                assert isinstance(node, dict) and part in node, \
                    f"{recipe.name}: override {text!r} names no existing key"
                node = node[part]
        return
    cfg = load_config(recipe, overrides)  # raises ConfigError naming the bad key
    assert isinstance(cfg, RecipeConfig)


def _entrypoint(job: dict[str, Any]) -> tuple[str, str, list[str]]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[2] == "--config", argv
    return argv[1], argv[3], argv[4:]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rayjob_entrypoints_and_recipes_exist(name):
    objs = rendered(name)
    jobs = by_kind(objs, "RayJob")
    clusters = by_kind(objs, "RayCluster")
    assert set(jobs) == {f"rsir-{j}" for j in JOB_RECIPES}
    missing = []
    for job_name, job in sorted(jobs.items()):
        job_key = job_name.removeprefix("rsir-")
        script, recipe, overrides = _entrypoint(job)
        assert script == f"jobs/{job_key}.py"
        assert recipe == JOB_RECIPES[job_key]
        for rel in (script, recipe):
            if not (REPO / rel).is_file():
                missing.append(rel)
        assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)*=\S+", o) for o in overrides), overrides
        if (REPO / recipe).is_file():
            _check_overrides(REPO / recipe, overrides)
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "rsir"}
        assert "rsir" in clusters
    assert not missing, f"files referenced by RayJob entrypoints do not exist: {sorted(set(missing))}"


def _storage_uris(objs: list[dict[str, Any]]) -> list[str]:
    out = []
    for job in by_kind(objs, "RayJob").values():
        for o in _entrypoint(job)[2]:
            key, value = o.split("=", 1)
            if key in ("data.shards", "train.run_dir", "model.checkpoint", "run_dir"):
                out.append(value)
    return out


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_storage_paths_are_uris_on_shared_storage(name):
    objs = rendered(name)
    uris = _storage_uris(objs)
    assert uris
    for uri in uris:
        if "://" in uri:
            assert uri.split("://")[0] in ("s3", "gs"), uri
        else:
            assert uri.startswith(STORAGE_MOUNT + "/"), uri
    pvc = by_kind(objs, "PersistentVolumeClaim")["rsir-shared"]
    for owner in [*by_kind(objs, "RayCluster").values(), *by_kind(objs, "RayService").values()]:
        for group, template in pod_templates(owner):
            where = f"{owner['kind']}/{group}"
            spec = template["spec"]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
            assert pvc["metadata"]["name"] in claims.values(), where
            for container in spec["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert claims.get(mounts.get(STORAGE_MOUNT)) == "rsir-shared", where
                refs = [e.get("configMapRef", {}).get("name") for e in container.get("envFrom", [])]
                assert "rsir-env" in refs, where
    assert by_kind(objs, "ConfigMap")["rsir-env"]["data"]["RSIR_STORAGE"] == STORAGE_MOUNT


def test_rayservice_serve_config_contract():
    for name in KUSTOMIZATIONS:
        services = by_kind(rendered(name), "RayService")
        assert list(services) == ["rsir-serve"]
        serve = yaml.safe_load(services["rsir-serve"]["spec"]["serveConfigV2"])
        apps = serve["applications"]
        assert len(apps) == 1
        assert apps[0]["import_path"] == SERVE_IMPORT_PATH
        assert apps[0]["args"] == {"config": SERVE_CONFIG}
        assert "runtime_env" not in apps[0], "serve runtime_env takes remote URIs only"
    assert (REPO / SERVE_CONFIG).is_file(), f"{SERVE_CONFIG} does not exist"
    module, func = SERVE_IMPORT_PATH.split(":")
    source = REPO / "platform" / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{source.relative_to(REPO)} does not exist"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert func in names, f"{module} defines no top-level {func}()"


def test_rayservice_pods_run_the_serve_front_of_the_serve_config():
    """The Serve front is a property of the cluster's processes, not of the application:
    every RayService pod carries PROXY_ENV of configs/serve.yaml's ``proxy``."""
    from rsir.config import load_config
    from rsir.serve.config import PROXY_ENV, ServeConfig

    want = PROXY_ENV[load_config(REPO / SERVE_CONFIG, cls=ServeConfig).proxy]
    for name in KUSTOMIZATIONS:
        service = by_kind(rendered(name), "RayService")["rsir-serve"]
        for group, template in pod_templates(service):
            for container in template["spec"]["containers"]:
                env = {e["name"]: e["value"] for e in container.get("env", [])}
                got = {k: env.get(k, "0") for k in want}
                assert got == want, f"{name}: RayService/{group}/{container['name']}: {got}"


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text(encoding="utf-8")


def _workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", _dockerfile(), flags=re.MULTILINE)
    assert len(workdirs) == 1
    return workdirs[0]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_runtime_env_ships_jobs_and_configs(name):
    """Image: rsir installed, working_dir = the image's copy of jobs/ + configs/.
    cpu-dev: working_dir and py_modules come from the developer's mounted checkout."""
    for job in by_kind(rendered(name), "RayJob").values():
        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert set(env) <= {"working_dir", "py_modules", "excludes", "env_vars"}
        assert "platform/" in env["excludes"]
        if name == "cpu-dev":
            assert env["working_dir"] == DEV_SOURCE
            assert env["py_modules"] == [f"{DEV_SOURCE}/platform/rsir"]
            assert (REPO / "platform" / "rsir" / "__init__.py").is_file()
            assert {".venv", ".git"} <= {e.rstrip("/") for e in env["excludes"]}
            pod = job["spec"]["submitterPodTemplate"]["spec"]
            mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
            assert DEV_SOURCE in mounts
            assert pod["restartPolicy"] == "Never"
        else:
            assert env["working_dir"] == _workdir()
            assert "py_modules" not in env
            assert "submitterPodTemplate" not in job["spec"]


# ---------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------

def test_dockerfile_follows_the_pins():
    text = _dockerfile()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.MULTILINE))
    assert args["RAY_IMAGE"] == f"rayproject/ray:{_ray_pin()}-py311-gpu"
    assert args["RSIR_VERSION"] == _version()
    assert re.search(r"^FROM\s+\$\{RAY_IMAGE\}\s*$", text, flags=re.MULTILINE)
    install = re.search(r'pip install "\.\[([a-z,]+)\]"', text)
    assert install, "the Dockerfile must pip install the project with its extras"
    extras = set(install.group(1).split(","))
    assert extras == {"text", "ann", "geo", "tune", "detect", "translate", "postgres"}
    assert extras <= set(_pyproject()["project"]["optional-dependencies"])
    for src in ("pyproject.toml", "platform/", "jobs/", "configs/"):
        assert re.search(rf"^COPY\b.*\s{re.escape(src)}\s", text, flags=re.MULTILINE), src
    if "rsir.setup_offline" in text:
        assert (REPO / "platform" / "rsir" / "setup_offline.py").is_file(), \
            "Dockerfile runs rsir.setup_offline, which does not exist"
    py = _pyproject()["project"]["requires-python"]
    assert py.startswith(">=3.") and int(py.split(".")[1]) <= 11


def test_dockerignore_keeps_the_image_small():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "out", "tests"} <= patterns
    for needed in ("platform", "jobs", "configs", "pyproject.toml", "README.md"):
        assert needed not in patterns


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_images_follow_the_tag_convention(name):
    """Dockerfile: rsir:<version> (GPU image), rsir:<version>-dev (CPU image)."""
    objs = rendered(name)
    images = {c["image"] for o in objs for c in containers(o)}
    version = _version()
    expected = {
        "base": {f"rsir:{version}"},
        "cpu-dev": {f"rsir:{version}-dev"},
        "gpu-prod": {f"registry.example.com/rsir/rsir:{version}"},
    }[name]
    assert images == expected
    for image in images:
        assert _split_image(image)[0].rsplit("/", 1)[-1] == "rsir"
    for where, spec in ray_cluster_specs(objs):
        assert spec["rayVersion"] == _ray_pin(), where


# ---------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------

def test_gpu_prod_runs_on_a100_with_autoscaling():
    objs = rendered("gpu-prod")
    cluster = by_kind(objs, "RayCluster")["rsir"]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= 8
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": A100}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["tolerations"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    train = _entrypoint(by_kind(objs, "RayJob")["rsir-train"])[2]
    assert "scaling.use_gpu=true" in train
    assert any(o.startswith("data.shards=s3://") for o in train)


def test_cpu_dev_asks_for_no_gpu():
    text = json.dumps(rendered("cpu-dev"))
    assert "nvidia.com/gpu" not in text
    assert "use_gpu=true" not in text


def diff_paths(a: Any, b: Any, path: str = "") -> set[str]:
    """The top-most JSON pointers at which ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for key in sorted(set(a) | set(b)):
            sub = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in a or key not in b:
                out.add(sub)
            else:
                out |= diff_paths(a[key], b[key], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(diff_paths(x, y, f"{path}/{i}") for i, (x, y) in
                             enumerate(zip(a, b)))) if a else set()
    return set() if a == b else {path}


def _pod(prefix: str, index: int = 0) -> str:
    return f"{prefix}/template/spec/containers/{index}"


_RC_HEAD = "RayCluster/rsir:/spec/headGroupSpec"
_RC_WORKER = "RayCluster/rsir:/spec/workerGroupSpecs/0"
_RS_HEAD = "RayService/rsir-serve:/spec/rayClusterConfig/headGroupSpec"
_RS_WORKER = "RayService/rsir-serve:/spec/rayClusterConfig/workerGroupSpecs/0"
EXPECTED_DEV_PROD_DIFF = {
    # storage: a laptop cluster's RWO volume vs a shared RWX one
    "PersistentVolumeClaim/rsir-shared:/spec/accessModes/0",
    "PersistentVolumeClaim/rsir-shared:/spec/resources/requests/storage",
    # images: rsir:<v>-dev vs registry/rsir:<v>
    f"{_pod(_RC_HEAD)}/image", f"{_pod(_RC_WORKER)}/image",
    f"{_pod(_RS_HEAD)}/image", f"{_pod(_RS_WORKER)}/image",
    # pod sizes
    *(f"{_pod(p)}/resources/{r}/{q}" for p in (_RC_HEAD, _RC_WORKER, _RS_WORKER)
      for r in ("limits", "requests") for q in ("cpu", "memory")),
    f"{_pod(_RS_HEAD)}/resources/limits/memory",
    *(f"{_pod(_RS_HEAD)}/resources/requests/{q}" for q in ("cpu", "memory")),
    # the A100 worker group vs a small CPU group
    *(f"{_pod(_RC_WORKER)}/resources/{r}/nvidia.com~1gpu" for r in ("limits", "requests")),
    f"{_RC_WORKER}/groupName", f"{_RC_WORKER}/maxReplicas", f"{_RS_WORKER}/maxReplicas",
    f"{_RC_WORKER}/template/spec/nodeSelector",
    f"{_RC_WORKER}/template/spec/tolerations",
    # jobs: object-storage shards and GPU scaling vs the developer's checkout via runtime_env
    *(f"RayJob/rsir-{j}:/spec/{f}" for j in JOB_RECIPES
      for f in ("entrypoint", "runtimeEnvYAML", "submitterPodTemplate")),
}


def test_overlays_differ_only_where_intended():
    def keyed(objs):
        return {f"{o['kind']}/{o['metadata']['name']}": o for o in objs}

    dev, prod = keyed(rendered("cpu-dev")), keyed(rendered("gpu-prod"))
    assert set(dev) == set(prod)
    paths = {f"{k}:{p}" for k in dev for p in diff_paths(dev[k], prod[k])}
    assert paths == EXPECTED_DEV_PROD_DIFF, (
        f"unexpected: {sorted(paths - EXPECTED_DEV_PROD_DIFF)}; "
        f"missing: {sorted(EXPECTED_DEV_PROD_DIFF - paths)}"
    )


# ---------------------------------------------------------------------------------------
# Submitting jobs/train.py through the Ray Jobs API
# ---------------------------------------------------------------------------------------

TRAIN_SCRIPT = "jobs/train.py"
DEMO_RECIPE = "configs/demo_tiny.yaml"
# Where the train job writes: the override that sets the run root, and the metrics file
# somewhere below it (``<run_dir>/metrics.jsonl``, one JSON object per epoch).
RUN_DIR_OVERRIDE = "train.run_dir={run_dir}"
METRICS_FILE = "metrics.jsonl"
JOB_TIMEOUT_S = 420
RUNTIME_ENV_EXCLUDES = [".git", ".venv", "platform/", "tests/", "bench/", "k8s/", "runs/",
                        "out/", "demo_out/", "*.egg-info", ".pytest_cache", ".ruff_cache"]


@contextmanager
def local_ray_cluster(workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A separate single-node Ray cluster on loopback; yields (dashboard address, headers).

    Own ``--temp-dir`` (so ``ray.init()`` elsewhere in this process never finds it), own
    ports, and its own token: Ray 2.60 turns token authentication on when a token exists
    (``~/.ray/auth_token``, which any earlier ``ray.init()`` creates), so the cluster runs
    with ``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN`` (inherited by its drivers
    and workers) and the client sends it as a bearer header; nothing is written to ~/.ray.
    Teardown stops only this cluster: SIGTERM to ``ray start --block`` (which then shuts its
    node down), SIGKILL to its process group if anything is left.
    ``ray stop`` is not used: it stops every Ray process on the machine, including the
    session's ``ray_session``.
    """
    ray_bin = Path(sys.executable).with_name("ray")
    assert ray_bin.exists(), f"no ray CLI beside {sys.executable}"
    gcs, dash, client, agent_http, agent_grpc, metrics, renv = free_ports(7)
    # The dashboard listens on 127.0.0.1 only; GCS and raylet use this host's own address
    # (Ray maps 127.0.0.1 to it), so all traffic stays on this machine.
    temp_dir = tempfile.mkdtemp(prefix="rsirjob", dir="/tmp")  # AF_UNIX paths stay short
    drop = ("RAY_ADDRESS", "PYTHONPATH", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    token = secrets.token_hex(32)
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"] = "token", token
    headers = {"Authorization": f"Bearer {token}"}
    env["PATH"] = f"{ray_bin.parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    cmd = [
        str(ray_bin), "start", "--head", "--block", f"--port={gcs}",
        "--num-cpus=2", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={renv}", f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log_path = workdir / "ray-start.log"
    address = f"http://127.0.0.1:{dash}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ray start exited {proc.returncode}:\n"
                                     f"{log_path.read_text()[-4000:]}")
            try:
                request = urllib.request.Request(f"{address}/api/version", headers=headers)
                with urllib.request.urlopen(request, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dashboard not up after 180 s:\n"
                                     f"{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield address, headers
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this cluster only
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def read_metrics(run_root: Path) -> list[dict[str, Any]]:
    files = sorted(run_root.rglob(METRICS_FILE), key=lambda p: p.stat().st_mtime)
    assert files, f"no {METRICS_FILE} under {run_root}"
    lines = files[-1].read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.slow
@pytest.mark.ray
def test_train_job_through_jobs_api(tmp_path):
    missing = [p for p in (TRAIN_SCRIPT, DEMO_RECIPE) if not (REPO / p).is_file()]
    assert not missing, f"not in the repository yet: {missing}"
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_root = tmp_path / "runs"
    entrypoint = shlex.join(["python", TRAIN_SCRIPT, "--config", DEMO_RECIPE,
                             RUN_DIR_OVERRIDE.format(run_dir=run_root)])
    # The development path of k8s/README.md: jobs/ + configs/ in the working_dir, rsir
    # as a py_module (the cluster's Python has no rsir on its path: PYTHONPATH is dropped).
    runtime_env = {
        "working_dir": str(REPO),
        "py_modules": [str(REPO / "platform" / "rsir")],
        "excludes": RUNTIME_ENV_EXCLUDES,
        "env_vars": {"OMP_NUM_THREADS": "1", "RAY_TRAIN_V2_ENABLED": "1"},
    }
    with local_ray_cluster(tmp_path) as (address, headers):
        client = JobSubmissionClient(address, headers=headers)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        status = client.get_job_status(job_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(2)
            status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if not status.is_terminal():
            client.stop_job(job_id)
        assert status == JobStatus.SUCCEEDED, f"job {job_id} is {status}:\n{logs[-6000:]}"

    history = read_metrics(run_root)
    epochs = (yaml.safe_load((REPO / DEMO_RECIPE).read_text()).get("train") or {}).get("epochs")
    assert history and all(isinstance(h, dict) for h in history)
    if epochs is not None:
        assert len(history) == epochs
    numbers = [v for h in history for v in h.values()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert numbers and all(math.isfinite(v) for v in numbers)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_index_and_evaluate_read_the_model_the_train_job_writes(name):
    """``model.checkpoint`` of index / evaluate is ``<train.run_dir>/<recipe name>/last.pt``
    of the train job (the recipe's ``train.select`` is ``last``)."""
    from rsir.config import load_config

    jobs = by_kind(rendered(name), "RayJob")
    _, recipe, train_overrides = _entrypoint(jobs["rsir-train"])
    cfg = load_config(REPO / recipe, train_overrides)
    assert cfg.train.select == "last"
    expected = f"{cfg.train.run_dir}/{cfg.name}/last.pt"
    for job in ("rsir-index", "rsir-evaluate"):
        overrides = dict(o.split("=", 1) for o in _entrypoint(jobs[job])[2])
        assert overrides["model.checkpoint"] == expected, (job, overrides)

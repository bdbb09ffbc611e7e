"""The cluster definitions (infra/k8s/, infra/cluster/): every manifest parses and validates offline, the
commands in them are real commands of this project, and the secure defaults hold.

Validation: built-in kinds against Kubernetes' OpenAPI schemas in strict mode (``kubernetes-validate``,
which ships them); KubeRay's RayCluster and RayJob against the openAPIV3Schema of KubeRay's own CRDs
(``tests/infra/kuberay/``, see its README), made strict the way the API server's field validation is (an
object that lists its properties admits no others unless it preserves unknown fields), plus the rules that
KubeRay's operator checks in code and the CRD cannot express. The launcher YAML against Ray's own schema.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.infra.deployment_commands import (
    LAUNCHER,
    REPO,
    check_job_command,
    job_commands,
    manifest_documents,
    prefetch_help,
    requirement_pins,
)

# Kubernetes minor versions the built-in kinds are checked against: an older one still in service and the
# newest that kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
CRDS = REPO / "tests" / "infra" / "kuberay"
DOCS = manifest_documents()
BUILT_IN = [(p, d) for p, d in DOCS if not d["apiVersion"].startswith("ray.io/")]
KUBERAY = [(p, d) for p, d in DOCS if d["apiVersion"].startswith("ray.io/")]
SECRETS_DOC = (REPO / "docs" / "cluster.md").read_text()
IMAGES = {
    "registry.example.com/head2head/head2head-gpu:0.1.0",
    "registry.example.com/head2head/head2head-cpu:0.1.0",
}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _ids(items):
    return [f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in items]


def _strict(schema):
    """The CRD schema with unknown fields rejected, as the API server's strict field validation does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    closed = "properties" in out and "additionalProperties" not in out
    if closed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _crd_validator(kind: str) -> jsonschema.Validator:
    crd = json.loads((CRDS / f"{kind.lower()}s.v1.schema.json").read_text())
    assert crd["kind"] == kind and crd["version"] == "v1"
    return jsonschema.Draft7Validator(_strict(crd["openAPIV3Schema"]))


def _pod_templates(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        return [spec["submitterPodTemplate"]]
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return [spec["template"]]
    return []


def _containers(doc: dict) -> list[dict]:
    out = [
        c for t in _pod_templates(doc) for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])
    ]
    if doc["kind"] == "RayCluster":
        out.append({"name": "autoscaler", **doc["spec"]["autoscalerOptions"]})
    return out


def test_every_manifest_is_listed():
    kinds = sorted(d["kind"] for _, d in DOCS)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "LimitRange",
            "Deployment",
            "Service",
            "StatefulSet",
        ]
        + ["Service", "RayCluster", "RayJob", "RayJob", "RayJob"]
    ), kinds


@pytest.mark.parametrize(("path", "doc"), BUILT_IN, ids=_ids(BUILT_IN))
def test_built_in_kinds_validate_against_kubernetes_schemas(path, doc):
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validation_rejects_an_unknown_field():
    path, deployment = next((p, d) for p, d in BUILT_IN if d["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("path", "doc"), KUBERAY, ids=_ids(KUBERAY))
def test_kuberay_resources_validate_against_the_crd_schema(path, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    errors = sorted(_crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d["spec"]["headGroupSpec"].__setitem__("bogusField", 1), "unknown field"),
        (lambda d: d["spec"].pop("headGroupSpec"), "required"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("maxReplicas", "many"), "type"),
        (lambda d: d["spec"]["authOptions"].__setitem__("mode", "password"), "enum"),
        (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"), "pod spec"),
    ],
    ids=["unknown-field", "missing-required", "wrong-type", "bad-enum", "pod-template"],
)
def test_crd_validation_rejects_broken_clusters(mutate, why):
    cluster = copy.deepcopy(next(d for _, d in KUBERAY if d["kind"] == "RayCluster"))
    mutate(cluster)
    assert list(_crd_validator("RayCluster").iter_errors(cluster)), f"a {why} error went unnoticed"


def test_raycluster_follows_the_operators_own_rules():
    # Rules KubeRay checks in code (ray-operator/controllers/ray/utils/validation.go), not in the CRD.
    (cluster,) = [d for _, d in KUBERAY if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    name = cluster["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 53
    assert spec["rayVersion"] == requirement_pins()["ray"], "the cluster must run the pinned Ray"
    assert spec["authOptions"] == {"mode": "token", "secretName": "head2head-ray-token"}
    assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52, 0), "token auth needs Ray 2.52+"
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups) == 2
    for template in _pod_templates(cluster):
        assert template["spec"]["containers"], "a Ray pod template has no container"
        assert template["spec"].get("restartPolicy", "Never") == "Never", "autoscaler v2 needs Never or unset"
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"] == 0, "groups scale from zero"
        for params in (group["rayStartParams"], spec["headGroupSpec"]["rayStartParams"]):
            assert "labels" not in params and "resources" not in params
    gpu = next(g for g in groups if g["groupName"] == "gpu")
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1", "the autoscaler learns a group's GPUs from the limits"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in KUBERAY if d["kind"] == "RayJob"],
    ids=_ids([(p, d) for p, d in KUBERAY if d["kind"] == "RayJob"]),
)
def test_rayjobs_run_on_the_cluster(path, doc):
    (cluster,) = [d for _, d in KUBERAY if d["kind"] == "RayCluster"]
    spec = doc["spec"]
    name = doc["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 47
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert doc["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    # With a cluster selector KubeRay rejects these; the cluster outlives the job.
    for field in ("rayClusterSpec", "backoffLimit", "suspend", "shutdownAfterJobFinishes"):
        assert field not in spec, field
    assert spec["submissionMode"] == "K8sJobMode"
    template = spec["submitterPodTemplate"]["spec"]
    assert template["restartPolicy"] == "Never"
    assert template["containers"][0]["name"] == "ray-job-submitter"
    assert "command" not in template["containers"][0], "KubeRay writes the submit command (and the token)"


@pytest.fixture(scope="module")
def job_help_texts():
    modules = {
        argv[2] for _, d in KUBERAY if d["kind"] == "RayJob" for argv in job_commands(d["spec"]["entrypoint"])
    }
    prefetch_help(modules)


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in KUBERAY if d["kind"] == "RayJob"],
    ids=_ids([(p, d) for p, d in KUBERAY if d["kind"] == "RayJob"]),
)
def test_rayjob_entrypoints_are_commands_of_this_project(job_help_texts, path, doc):
    commands = job_commands(doc["spec"]["entrypoint"])
    assert len(commands) == 1 and " ".join(commands[0]) == " ".join(doc["spec"]["entrypoint"].split())
    check_job_command(commands[0], f"{path.name} entrypoint")


def test_job_command_check_catches_mistakes(job_help_texts):
    good = ["python", "-m", "jobs.preprocess", "--config", "/app/configs/preprocess.yaml"]
    check_job_command(good + ["--input", "s3://b/v", "--output", "s3://b/s"], "good")
    for bad in (
        ["python", "-m", "jobs.preprocesss"],
        good + ["--inputs", "s3://b/v"],
        good[:3] + ["--config", "/app/configs/nope.yaml"],
        good + ["--set", "ray.actorz=3"],
        good + ["--set", "ray.actors=many"],
    ):
        with pytest.raises((AssertionError, ValueError)):
            check_job_command(bad, "bad")


@functools.cache
def _mlflow_server_help() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "server", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_mlflow_server_command_is_real_and_proxies_artifacts():
    (deployment,) = [
        d for _, d in BUILT_IN if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    help_text = _mlflow_server_help()
    flags = [a for a in container["args"] if a.startswith("--")]
    for flag in flags:
        assert re.search(rf"{flag}\b", help_text), f"mlflow server has no {flag}"
    args = container["args"]
    assert "--serve-artifacts" in args and args[args.index("--artifacts-destination") + 1].startswith("s3://")
    assert "--backend-store-uri" not in args, "the database URI (with its password) comes from the secret"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "head2head-mlflow-db"
    assert "postgresql://" in SECRETS_DOC and "psycopg2-binary" in requirement_pins()
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert "mlflow.head2head.svc:5000" in hosts and "localhost:*" in hosts
    tracking = {
        e["value"]
        for _, d in KUBERAY
        if d["kind"] == "RayCluster"
        for c in _containers(d)
        for e in c.get("env", [])
        if e["name"] == "MLFLOW_TRACKING_URI"
    }
    assert tracking == {"http://mlflow.head2head.svc:5000"}


def test_services_are_cluster_internal():
    for _, doc in BUILT_IN:
        if doc["kind"] == "Service":
            assert doc["spec"]["type"] == "ClusterIP", doc["metadata"]["name"]
    for _, doc in DOCS:
        assert doc["kind"] not in ("Ingress", "Route", "Gateway"), "nothing is exposed outside the cluster"
    (cluster,) = [d for _, d in KUBERAY if d["kind"] == "RayCluster"]
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert "headServiceAnnotations" not in cluster["spec"]


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in DOCS if _pod_templates(d)],
    ids=_ids([(p, d) for p, d in DOCS if _pod_templates(d)]),
)
def test_containers_are_non_root_with_limits(path, doc):
    namespace = next(d for _, d in BUILT_IN if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for template in _pod_templates(doc):
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) > 0
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}
    for container in _containers(doc):
        where = f"{path.name}:{container['name']}"
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"] == {"drop": ["ALL"]}, where
        assert not security.get("privileged") and security.get("runAsUser", 1) != 0, where
        limits = container["resources"]["limits"]
        assert {"cpu", "memory"} <= limits.keys(), f"{where} has no CPU or memory limit"


def test_images_are_the_projects_or_pinned():
    for path, doc in DOCS:
        for container in _containers(doc):
            if container["name"] == "autoscaler":
                continue  # KubeRay runs the autoscaler in the head's image
            image = container["image"]
            assert image in IMAGES or re.search(r"@sha256:[0-9a-f]{64}$", image), f"{path.name}: {image}"
    (cluster,) = [d for _, d in KUBERAY if d["kind"] == "RayCluster"]
    groups = {
        g["groupName"]: g["template"]["spec"]["containers"][0]["image"]
        for g in cluster["spec"]["workerGroupSpecs"]
    }
    assert groups["cpu"].endswith("head2head-cpu:0.1.0") and groups["gpu"].endswith("head2head-gpu:0.1.0")


def _walk(value, path=()):
    if isinstance(value, dict):
        for key, child in value.items():
            yield path + (key,), child
            yield from _walk(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk(child, path + (i,))


def test_credentials_are_referenced_never_inline():
    referenced = set()
    for path, doc in DOCS:
        assert doc["kind"] != "Secret", f"{path.name} defines a Secret: create it by hand (docs/cluster.md)"
        for key_path, value in _walk(doc):
            if key_path[-1] in ("secretKeyRef", "secretRef"):
                referenced.add(value["name"])
            if key_path[-1] == "secretName" and isinstance(value, str):
                referenced.add(value)
            if key_path[-1] == "env" and isinstance(value, list):
                for var in value:
                    if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_URI$", var["name"]) and "value" in var:
                        assert var["name"] == "MLFLOW_TRACKING_URI", f"{path.name}: {var['name']} is inline"
    # Every secret a manifest names is one the walk-through creates.
    for name in referenced:
        assert f"create secret generic {name} " in SECRETS_DOC, f"docs/cluster.md does not create {name}"
    assert referenced == {"head2head-ray-token", "head2head-s3", "head2head-mlflow-db", "head2head-postgres"}
    assert "AWS_SECRET_ACCESS_KEY=" not in "".join(p.read_text() for p in {p for p, _ in DOCS})


def test_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    broken = copy.deepcopy(config)
    broken["docker"]["imagee"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_launcher_commands_are_real_and_secure():
    config = yaml.safe_load(LAUNCHER.read_text())
    ray = Path(sys.executable).parent / "ray"
    help_text = subprocess.run(
        [str(ray), "start", "--help"], capture_output=True, text=True, check=True
    ).stdout
    started = {}
    for role in ("head", "worker"):
        for command in config[f"{role}_start_ray_commands"]:
            for part in re.split(r"&&|;", command):
                words = part.split()
                if words[:2] == ["ray", "start"]:
                    for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                        assert re.search(rf"{flag}\b", help_text), f"ray start has no {flag}"
                    started[role] = part
        joined = " ".join(config[f"{role}_start_ray_commands"])
        assert "RAY_AUTH_MODE=token" in joined and "RAY_AUTH_TOKEN=" in joined, f"{role}: no token auth"
        assert "get_parameter" in joined and "WithDecryption=True" in joined
    assert "--dashboard-host=127.0.0.1" in started["head"], "the dashboard listens on the head's loopback"
    assert "--head" in started["head"] and "--address=$RAY_HEAD_IP:6379" in started["worker"]
    head_image = config["docker"]["head_image"]
    gpu_image = config["available_node_types"]["gpu"]["docker"]["worker_image"]
    assert head_image == gpu_image and head_image in IMAGES and config["docker"]["worker_image"] in IMAGES
    for name, node in config["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    text = LAUNCHER.read_text()
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY)\s*[=:]", text)
    mlflow = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    for flag in re.findall(r"(--[a-z-]+)", mlflow.split("mlflow server", 1)[1].split(">")[0]):
        assert re.search(rf"{flag}\b", _mlflow_server_help()), f"mlflow server has no {flag}"
    assert config["provider"]["region"] in " ".join(config["docker"]["run_options"])


def test_s3_locations_are_the_documented_layout():
    # Every S3 URI in the manifests and the launcher sits under a prefix of docs/cluster.md's layout.
    layout = SECRETS_DOC.split("## Where things live in S3", 1)[1].split("```")[1]
    prefixes = [line.split()[0] for line in layout.splitlines()[2:] if line.strip()]
    assert "shards/" in prefixes and "people/persons/<identity>/" in prefixes
    texts = [p.read_text() for p in sorted({p for p, _ in DOCS})] + [LAUNCHER.read_text()]
    uris = {u for text in texts for u in re.findall(r"s3://head2head-data/[\w./-]*", text)}
    assert uris
    for uri in uris:
        rest = uri.removeprefix("s3://head2head-data/")
        assert any(
            rest.startswith(p.split("<")[0]) or p.startswith(rest.rstrip("/") + "/") for p in prefixes
        ), f"{uri} is not in the layout of docs/cluster.md"

"""The walk-through (docs/cluster.md) and docker/README.md: their shell commands are the ones the manifests,
the images and the jobs accept. Each logical line of each ```bash block is checked by what it runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra.deployment_commands import (
    DOCKERFILES,
    LAUNCHER,
    REPO,
    check_job_command,
    job_commands,
    logical_lines,
    manifest_documents,
    prefetch_help,
)

PAGES = (REPO / "docs" / "cluster.md", REPO / "docker" / "README.md")
DOCS = manifest_documents()
CRD_README = (REPO / "tests" / "infra" / "kuberay" / "README.md").read_text()


def _commands(page: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    return [line for block in blocks for line in logical_lines(block)]


ALL = [(page, line) for page in PAGES for line in _commands(page)]


def _named(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


def _secret_keys() -> dict[str, set[str] | None]:
    """Secret name -> the keys the manifests read from it (authOptions reads ``auth_token``); None for a
    secret read whole as environment variables (``envFrom``)."""
    keys: dict[str, set[str] | None] = {}
    for _, doc in DOCS:
        text = yaml.safe_dump(doc)
        for key, name in re.findall(r"secretKeyRef:\n\s+key: (\S+)\n\s+name: (\S+)", text):
            keys.setdefault(name, set()).add(key)
        for name in re.findall(r"secretRef:\n\s+name: (\S+)", text):
            keys[name] = None
        if doc["kind"] == "RayCluster":
            keys.setdefault(doc["spec"]["authOptions"]["secretName"], set()).add("auth_token")
    return keys


def test_the_pages_have_commands():
    assert len(_commands(PAGES[0])) > 25 and len(_commands(PAGES[1])) >= 4


@pytest.fixture(scope="module")
def help_texts():
    prefetch_help({argv[2] for _, line in ALL for argv in job_commands(line)})


@pytest.mark.parametrize(("page", "line"), ALL, ids=[f"{p.name}:{i}" for i, (p, _) in enumerate(ALL)])
def test_command(help_texts, page, line):
    where = f"{page.name}: {line[:80]}"
    words = shlex.split(line)
    for argv in job_commands(line):
        check_job_command(argv, where)
    if words[:2] == ["kubectl", "apply"]:
        path = REPO / words[words.index("-f") + 1]
        assert path.is_file() and path.parent.name == "k8s", where
    if "create" in words and "secret" in words:
        name = words[words.index("generic") + 1]
        keys = _secret_keys()
        assert name in keys, f"{where}: no manifest reads the secret {name}"
        given = {w.split("=", 2)[1] for w in words if w.startswith("--from-literal=")}
        if keys[name] is not None:
            assert given == keys[name], f"{where}: keys {given}, the manifests read {keys[name]}"
    if words[:2] == ["kubectl", "-n"] and words[2] != "head2head":
        raise AssertionError(f"{where}: the namespace is head2head")
    if "port-forward" in words:
        service, ports = words[words.index("port-forward") + 1], words[words.index("port-forward") + 2]
        name = service.removeprefix("svc/")
        port = int(ports.split(":")[1])
        if name in _named("Service"):
            assert port in [p["port"] for p in _named("Service")[name]["spec"]["ports"]], where
        else:
            (cluster,) = _named("RayCluster").values()
            assert name == f"{cluster['metadata']['name']}-head-svc", f"{where}: KubeRay's head service"
            head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            assert port in [p["containerPort"] for p in head["ports"]], where
    for word in words:
        if word.startswith("job/"):  # the submitter Job KubeRay names after its RayJob
            assert word.removeprefix("job/") in _named("RayJob"), where
        if word.startswith("deploy/"):
            assert word.removeprefix("deploy/") in _named("Deployment"), where
    if words[:3] == ["kubectl", "-n", "head2head"] and words[3:4] == ["get"] and len(words) > 5:
        kind, name = words[4], words[5]
        expected = {"rayjob": "RayJob", "raycluster": "RayCluster"}[kind]
        assert name in _named(expected), where
    if words[:2] == ["docker", "build"]:
        dockerfile = REPO / words[words.index("-f") + 1]
        assert dockerfile in DOCKERFILES and words[-1] == ".", where
        args = re.findall(r"^ARG (\w+)", dockerfile.read_text(), flags=re.M)
        for i, word in enumerate(words):
            if word == "--build-arg":
                assert words[i + 1].split("=")[0] in args, (
                    f"{where}: {dockerfile.name} has no ARG {words[i + 1]}"
                )
        tag = words[words.index("-t") + 1]
        image = "head2head-gpu" if dockerfile.name == "Dockerfile" else "head2head-cpu"
        assert tag.split(":")[0].endswith(image), f"{where}: {dockerfile.name} builds {image}"
    if words[:1] == ["ray"] and words[1] in ("up", "dashboard", "down"):
        assert REPO / words[2] == LAUNCHER, where
    if words[:3] == ["ray", "job", "submit"]:
        assert words[words.index("--address") + 1] == "http://127.0.0.1:8265", where
        assert "--working-dir" not in words, f"{where}: the images hold the code"
    if words[:3] == ["aws", "ssm", "put-parameter"]:
        name = words[words.index("--name") + 1]
        assert f'Name="{name}"' in LAUNCHER.read_text(), f"{where}: the launcher does not read {name}"
        assert "--type" in words and words[words.index("--type") + 1] == "SecureString", where
    if words[:2] == ["helm", "install"]:
        version = words[words.index("--version") + 1]
        assert f"KubeRay v{version}" in CRD_README, f"{where}: the CRD schemas tested are another version"


def test_ray_job_submit_options_exist():
    ray = Path(sys.executable).parent / "ray"
    help_text = subprocess.run(
        [str(ray), "job", "submit", "--help"], capture_output=True, text=True, check=True
    )
    for page, line in ALL:
        words = shlex.split(line)
        if words[:3] == ["ray", "job", "submit"]:
            for word in words[3 : words.index("--")]:
                if word.startswith("--"):
                    assert word in help_text.stdout, f"{page.name}: ray job submit has no {word}"


def test_every_manifest_and_image_is_used_by_the_walk_through():
    commands = " ".join(line for _, line in ALL)
    for path in sorted({p for p, _ in DOCS}):
        assert f"infra/k8s/{path.name}" in commands, f"docs/cluster.md never applies {path.name}"
    for dockerfile in DOCKERFILES:
        assert f"docker/{dockerfile.name} " in commands
    for name in _named("RayJob"):
        assert name in commands

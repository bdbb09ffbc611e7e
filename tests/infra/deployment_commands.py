"""Shared by the deployment tests: the manifests, the Dockerfiles, and a check that a shell command naming
one of this project's jobs is a command that job accepts.

A job command (``python -m jobs.NAME ARGS``, as in a RayJob's entrypoint, a launcher command or a shell
block of docs/cluster.md) is accepted when: the module exists; ``python -m jobs.NAME --help`` runs and
lists every option the command uses; every ``--config FILE`` exists (``/app/`` in the images is the
repository root here); and the job's config class loads that file with the command's ``--set`` overrides
through ``infra.config.load_config``. Paths under ``/opt/head2head/`` are files the GPU image provides.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from infra.config import load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
LAUNCHER = REPO / "infra" / "cluster" / "aws.yaml"
DOCKERFILES = (REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu")
IMAGE_APP = "/app/"  # the images' working directory holds configs/ (docker/Dockerfile)
IMAGE_FILES = "/opt/head2head/"  # weights and the 3DMM the GPU image places at build time
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


def manifest_documents() -> list[tuple[Path, dict]]:
    """(file, document) for every YAML document under infra/k8s/, in file order."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: a document that is not a mapping"
            out.append((path, doc))
    return out


def requirement_pins() -> dict[str, str]:
    """requirements.txt and requirements-nodeps.txt as {normalised name: version}."""
    pins = {}
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                package, version = line.split("==")
                pins[normalise(package)] = version.strip()
    return pins


def normalise(package: str) -> str:
    """PEP 503 name normalisation: ``face_alignment`` and ``Face-Alignment`` are one package."""
    return re.sub(r"[-_.]+", "-", package).lower()


def logical_lines(text: str) -> Iterator[str]:
    """Shell text joined at backslash-newlines, one logical line at a time, comments dropped."""
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def job_commands(command: str) -> list[list[str]]:
    """Every ``python -m jobs.NAME ...`` inside one shell command line (also inside ``sh -c '...'``), as
    argument lists that end at the next shell operator."""
    found = []
    tokens = shlex.split(command)
    for i, token in enumerate(tokens):
        if token == "python" and tokens[i + 1 : i + 2] == ["-m"] and tokens[i + 2].startswith("jobs."):
            end = next((j for j in range(i, len(tokens)) if tokens[j] in SHELL_OPERATORS), len(tokens))
            found.append(tokens[i:end])
        elif " " in token and "python -m jobs." in token:
            found.extend(job_commands(token))
    return found


_HELP: dict[str, str] = {}


def job_help(module: str) -> str:
    """``python -m MODULE --help`` (the job's real command line), run once per module."""
    if module not in _HELP:
        prefetch_help({module})
    return _HELP[module]


def prefetch_help(modules: set[str]) -> None:
    """Runs the ``--help`` of several modules at once (each imports torch and Ray) and keeps the texts."""
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-m", m, "--help"],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for m in sorted(modules - _HELP.keys())
    }
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"python -m {module} --help failed:\n{err[-2000:]}"
        _HELP[module] = out


def config_class(module: str) -> type:
    """The config dataclass a job loads: the class its ``parse_job_args(parser, CLASS, ...)`` call names."""
    job = importlib.import_module(module)
    tree = ast.parse(Path(job.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_job_args":
            return getattr(job, node.args[1].id)
    raise AssertionError(f"{module} calls no parse_job_args")


def local_path(path: str) -> Path:
    """A path as the images see it, mapped to this checkout (``/app/configs/x`` -> ``configs/x``)."""
    return REPO / path[len(IMAGE_APP) :] if path.startswith(IMAGE_APP) else REPO / path


def check_job_command(argv: list[str], where: str) -> None:
    """Asserts that ``argv`` (``python -m jobs.NAME ...``) is a command the job accepts (module docstring)."""
    assert argv[:2] == ["python", "-m"], f"{where}: {argv}"
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", job_help(module)))
    config, overrides, image_paths = None, [], []
    args = argv[3:]
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"{where}: unexpected argument {arg!r} in {' '.join(argv)}"
        name, _, value = arg.partition("=")
        assert name in options, f"{where}: {module} has no option {name} (its --help: {sorted(options)})"
        if not value and name not in ("--dry-run", "--help"):
            i += 1
            value = args[i]
        if name == "--config":
            config = value
        elif name == "--set":
            overrides.append(value)
        image_paths += re.findall(rf"{re.escape(IMAGE_FILES)}[\w./-]+", value)
        i += 1
    if config is not None:
        assert local_path(config).is_file(), f"{where}: --config {config} does not exist here"
    cls = config_class(module)
    load_config(cls, str(local_path(config)) if config else None, overrides)  # raises naming a bad key
    gpu_image = DOCKERFILES[0].read_text()
    for path in image_paths:
        assert image_file_exists(path, gpu_image), f"{where}: {path} is not placed by docker/Dockerfile"


def image_file_exists(path: str, dockerfile: str) -> bool:
    """Whether the GPU image places ``path``: the Dockerfile copies a folder onto its parent and names it."""
    name = path.rsplit("/", 1)[1]
    copies = re.findall(r"^COPY --from=\S+ (\S+) (\S+)$", dockerfile, flags=re.M)
    dests = [dest.rstrip("/") for _, dest in copies]
    return name in dockerfile and any(path == dest or path.startswith(dest + "/") for dest in dests)

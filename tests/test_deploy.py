"""Deployment files: the properties an operator relies on, checked without Docker or a cluster.

Schema validity is `.ci/validate-deploy`'s job (run here when its tools are present); these tests
pin what a schema cannot see: who the containers run as, which commands run where, which images.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
VALIDATE = REPO / ".ci" / "validate-deploy"
DOCKERFILES = [DEPLOY / "Dockerfile.cpu", DEPLOY / "Dockerfile.cuda"]
PINNED_IMAGE = re.compile(r"^[\w.\-/:${}]+:[\w.\-]*\d[\w.\-]*\}?$")


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests() -> dict[tuple[str, str], dict]:
    """Every Kubernetes resource in deploy/k8s by (kind, name)."""
    resources = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                resources[(document["kind"], document["metadata"]["name"])] = document
    return resources


def containers(resource: dict) -> list[dict]:
    return resource["spec"]["template"]["spec"]["containers"]


def final_stage(dockerfile: Path) -> list[str]:
    """Instructions after the last FROM: what the shipped image is made of."""
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return [line for line in lines[last_from:] if line and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_pinned_and_run_as_a_non_root_user(dockerfile):
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base)
    assert "TORCH_VERSION=2.14.1" in text and "TORCHVISION_VERSION=0.29.1" in text
    assert re.search(r"RAY_VERSION=\d+\.\d+\.\d+", text)
    users = [line.split()[1] for line in final_stage(dockerfile) if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}


def test_cuda_image_has_gpu_faiss_and_cpu_image_uses_the_cpu_wheels():
    cuda, cpu = (DEPLOY / "Dockerfile.cuda").read_text(), (DEPLOY / "Dockerfile.cpu").read_text()
    assert ".[gpu,distributed]" in cuda and "faiss-gpu==${FAISS_VERSION}" in cuda
    assert "download.pytorch.org/whl/cpu" in cpu and "faiss-gpu" not in cpu


def test_compose_services_and_their_commands():
    services = compose()["services"]
    assert {"postgres", "migrate", "api", "worker", "ray-head", "ray-worker"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["api"]["command"] == [
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--no-worker",
    ]
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert "healthcheck" in services["postgres"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("ray-head", "ray-worker"):
        assert services[name]["profiles"] == ["ray"]
    for name in ("postgres", "migrate", "api", "worker"):
        assert "profiles" not in services[name]


def test_compose_reserves_gpus_and_shares_volumes():
    document = compose()
    services = document["services"]
    for name in ("worker", "ray-worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("migrate", "api", "worker", "ray-head", "ray-worker"):
        assert "auditor-data:/data" in services[name]["volumes"]
    assert any(v.startswith("postgres-data:") for v in services["postgres"]["volumes"])
    assert {"postgres-data", "auditor-data"} <= set(document["volumes"])


def test_images_are_pinned_everywhere():
    images = [service["image"] for service in compose()["services"].values()]
    images += [
        c["image"]
        for r in manifests().values()
        if "template" in r.get("spec", {})
        for c in containers(r)
    ]
    for image in images:
        assert ":latest" not in image and PINNED_IMAGE.match(image), image


def test_no_secret_values_are_committed():
    """The example env file holds placeholders; manifests only reference the Secret."""
    example = (DEPLOY / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=change-me" in example
    assert ".env" in (DEPLOY / ".gitignore").read_text().splitlines()
    resources = manifests()
    assert not [key for key in resources if key[0] == "Secret"]
    for key in ("AUDITOR_DATABASE_URL", "POSTGRES_PASSWORD"):
        assert key not in resources[("ConfigMap", "auditor-config")]["data"]
    for resource in resources.values():
        for container in containers(resource) if "template" in resource.get("spec", {}) else []:
            database_url = next(e for e in container["env"] if e["name"] == "AUDITOR_DATABASE_URL")
            assert "value" not in database_url
            assert database_url["valueFrom"]["secretKeyRef"]["name"] == "auditor-secrets"
    for service in compose()["services"].values():
        assert not {"AUDITOR_DATABASE_URL", "POSTGRES_PASSWORD"} & set(
            service.get("environment", {})
        )


def test_kubernetes_api_probes_worker_gpus_and_migration_job():
    resources = manifests()
    (api,) = containers(resources[("Deployment", "auditor-api")])
    assert api["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] == "/healthz"
    service = resources[("Service", "auditor-api")]
    assert (
        service["spec"]["selector"]
        == resources[("Deployment", "auditor-api")]["spec"]["selector"]["matchLabels"]
    )

    (worker,) = containers(resources[("Deployment", "auditor-worker")])
    assert worker["args"] == ["worker"]
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cuda" in worker["image"]

    job = resources[("Job", "auditor-migrate")]
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["db", "upgrade"]

    assert resources[("PersistentVolumeClaim", "auditor-data")]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    for resource in resources.values():
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "auditor"
        if "template" in resource.get("spec", {}):
            assert resource["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def validation_tools_missing() -> str | None:
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed"
    if not (Path(sys.prefix) / "bin" / "kubernetes-validate").exists():
        return "kubernetes-validate is not installed"
    return None


def run_validation(deploy_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(VALIDATE), str(deploy_dir)],
        env={**os.environ, "VENV": sys.prefix},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(validation_tools_missing() is not None, reason=str(validation_tools_missing()))
def test_validate_deploy_accepts_the_files_and_rejects_broken_ones(tmp_path):
    accepted = run_validation(DEPLOY)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    broken_compose = tmp_path / "compose-case"
    shutil.copytree(DEPLOY, broken_compose)
    path = broken_compose / "compose.yaml"
    path.write_text(path.read_text().replace("shm_size: 4gb", "shm_sise: 4gb"))
    assert run_validation(broken_compose).returncode != 0

    broken_manifest = tmp_path / "manifest-case"
    shutil.copytree(DEPLOY, broken_manifest)
    path = broken_manifest / "k8s" / "worker.yaml"
    path.write_text(path.read_text().replace("containers:", "container:", 1))
    rejected = run_validation(broken_manifest)
    assert rejected.returncode != 0 and "worker.yaml" in rejected.stderr

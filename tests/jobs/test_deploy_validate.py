"""deploy/ checked by real validators: kubernetes-validate for the k8s manifests, the compose-spec
schema (check-jsonschema's bundled copy) for the compose files. Each validator is also fed a broken
file, so a validator that accepts everything would fail here."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILES = sorted(DEPLOY.rglob("docker-compose*.yml"))

# The documented minimum (deploy/README.md) and the newest schema the validator ships.
MIN_K8S = "1.27.0"
K8S_VERSIONS = [MIN_K8S, latest_version()]

# Custom resources have no built-in schema: KubeRay's RayJob comes with the operator's CRD, and a
# Kustomization is read by kubectl, never sent to the API server.
CRD_KINDS = {("ray.io/v1", "RayJob"), ("kustomize.config.k8s.io/v1beta1", "Kustomization")}


def _objects() -> list[tuple[str, dict]]:
    objs = []
    for f in sorted(K8S.glob("*.yaml")):
        objs.extend((f.name, d) for d in yaml.safe_load_all(f.read_text()) if d is not None)
    return objs


def _builtin_objects() -> list[tuple[str, dict]]:
    return [(name, o) for name, o in _objects() if (o["apiVersion"], o["kind"]) not in CRD_KINDS]


def _validate(obj: dict, version: str) -> None:
    # strict: an unknown (misspelt) field is an error too, as kubectl's server-side validation does
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_k8s_manifest_validates(version):
    objs = _builtin_objects()
    kinds = sorted(o["kind"] for _, o in objs)
    assert kinds == sorted(["Namespace", "Secret", "Secret", "Service", "Service", "Service", "StatefulSet",
                            "Deployment", "PersistentVolumeClaim", "PersistentVolumeClaim", "ConfigMap", "CronJob"])
    for name, obj in objs:
        try:
            _validate(obj, version)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {e.message}")


def test_skipped_kinds_are_only_the_custom_resources():
    """What the validator skips is exactly what it has no schema for, and nothing else."""
    skipped = {(o["apiVersion"], o["kind"]) for _, o in _objects()} - {(o["apiVersion"], o["kind"]) for _, o in _builtin_objects()}
    assert skipped == CRD_KINDS
    for api_version, kind in CRD_KINDS:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            _validate({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}, MIN_K8S)


def _cronjob() -> dict:
    (cron,) = [o for _, o in _objects() if o["kind"] == "CronJob"]
    return copy.deepcopy(cron)


def test_validator_rejects_the_podfailurepolicy_form_that_1_27_refuses():
    """The form the CronJob had before: a rule with onExitCodes only. 1.27 requires onPodConditions."""
    cron = _cronjob()
    (rule,) = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    del rule["onPodConditions"]
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        _validate(cron, MIN_K8S)
    assert "'onPodConditions' is a required property" in err.value.message
    _validate(cron, "1.29.0")  # optional from 1.29 on: why the minimum matters


def test_validator_rejects_a_misspelt_field_and_a_wrong_type():
    cron = _cronjob()
    cron["spec"]["concurrencyPolicy "] = cron["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError, match="concurrencyPolicy "):
        _validate(cron, MIN_K8S)
    cron = _cronjob()
    cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two' is not of type 'integer'"):
        _validate(cron, MIN_K8S)


def _check_compose(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )


def test_compose_files_match_the_compose_spec():
    assert [f.relative_to(DEPLOY).as_posix() for f in COMPOSE_FILES] == [
        "docker-compose.yml", "qdrant-cluster/docker-compose.yml"]
    result = _check_compose(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_compose_check_rejects_broken_files(tmp_path):
    """A top-level typo, a misspelt service key and a wrong type: each named in the report."""
    original = yaml.safe_load(COMPOSE_FILES[0].read_text())
    name = next(iter(original["services"]))
    breakages = {
        "top": (lambda d: d.update(servics={}), "'servics' does not match any of the regexes"),
        "key": (lambda d: d["services"][name].update(enviroment={"A": "1"}), "('enviroment' was unexpected)"),
        "type": (lambda d: d["services"][name].update(ports=6333), "6333 is not of type 'array'"),
    }
    files = {}
    for label, (breakage, _) in breakages.items():
        doc = copy.deepcopy(original)
        breakage(doc)
        files[label] = tmp_path / label / "docker-compose.yml"
        files[label].parent.mkdir()
        files[label].write_text(yaml.safe_dump(doc))
    result = _check_compose(*files.values())
    assert result.returncode == 1, result.stdout
    for label, (_, message) in breakages.items():
        lines = [line for line in result.stdout.splitlines() if str(files[label]) in line]
        assert lines and message in lines[0], (label, result.stdout)

"""Structural checks of deploy/: everything parses and the pieces reference each other correctly."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from croniter import croniter

from mmrag.jobs.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
CLUSTER = DEPLOY / "qdrant-cluster" / "docker-compose.yml"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[dict]:
    objs = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        objs.extend(_docs(f))
    return objs


def _by_kind(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in _k8s_objects() if o["kind"] == kind}


def _walk(node, key: str):
    """Every value stored under `key`, anywhere in a nested structure."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def test_every_yaml_file_parses():
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for f in files:
        assert _docs(f), f"{f} is empty"


def test_k8s_objects_are_well_formed_and_listed_in_the_kustomization():
    objs = _k8s_objects()
    for o in objs:
        assert o.get("apiVersion") and o.get("kind"), o
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", o["metadata"]["name"]), o["metadata"]
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["Namespace", "Secret", "Secret", "Service", "Service", "Service", "StatefulSet", "Deployment",
                            "PersistentVolumeClaim", "PersistentVolumeClaim", "ConfigMap", "CronJob", "RayJob"])
    kust = _docs(K8S / "kustomization.yaml")[0]
    assert kust["kind"] == "Kustomization"
    manifests = sorted(f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == manifests
    # the CronJob's image placeholder is what the kustomization rewrites
    cron = _by_kind("CronJob")["mmrag-photos"]
    images = {c["image"] for c in _walk(cron, "containers") for c in c}
    assert images == {kust["images"][0]["name"]}


def test_cronjob_runs_the_pipeline_once_at_a_time():
    cron = _by_kind("CronJob")["mmrag-photos"]
    spec = cron["spec"]
    assert croniter.is_valid(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    (container,) = pod["containers"]
    cmd = container["command"] + container.get("args", [])
    assert cmd[:2] == ["mmrag", "run"] and cmd[2].endswith(".yaml")
    # config errors (2) and a held lock (3) are not retried
    rule = job["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
    assert sorted(rule["onExitCodes"]["values"]) == [2, 3]

    # the pipeline file comes from the ConfigMap mounted where the command looks for it
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    pipeline_path = Path(cmd[2])
    (vol_name,) = [n for n, p in mounts.items() if Path(p) == pipeline_path.parent]
    cm = _by_kind("ConfigMap")[volumes[vol_name]["configMap"]["name"]]
    assert pipeline_path.name in cm["data"]
    # and every PVC the pod mounts exists
    pvcs = _by_kind("PersistentVolumeClaim")
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            assert v["persistentVolumeClaim"]["claimName"] in pvcs

    # the pipeline in the ConfigMap is valid, with the container's env for ${VAR}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QDRANT_URL"] == "http://qdrant:6333" and "qdrant" in _by_kind("Service")
    assert env["MMRAG_HOME"] == mounts["home"]
    assert any(Path(env["PHOTOS_DIR"]).is_relative_to(mounts[n]) for n in mounts)


def test_configmap_pipeline_is_a_valid_pipeline(tmp_path):
    cm = _by_kind("ConfigMap")["mmrag-pipelines"]
    for fname, text in cm["data"].items():
        (tmp_path / fname).write_text(text)
        (tmp_path / "photos").mkdir(exist_ok=True)
        pdef = load_pipeline(tmp_path / fname, env={"PHOTOS_DIR": str(tmp_path / "photos")})
        assert pdef.source.folder == (tmp_path / "photos").resolve()


def test_the_api_key_secret_is_referenced_by_name_wherever_it_is_used():
    secrets = _by_kind("Secret")
    refs = [(o["kind"], r) for o in _k8s_objects() for r in _walk(o, "secretKeyRef")]
    assert {kind for kind, _ in refs} == {"StatefulSet", "CronJob", "Deployment", "RayJob"}
    for _, ref in refs:
        assert ref["name"] in secrets
        assert ref["key"] in secrets[ref["name"]].get("stringData", {}) | secrets[ref["name"]].get("data", {})
    # the server gets it as its API key, the job as the client's key
    env_names = {
        kind: {e["name"] for e in _walk(o, "env") for e in e if "valueFrom" in e}
        for o in _k8s_objects() for kind in [o["kind"]] if kind in ("StatefulSet", "CronJob")
    }
    assert env_names == {"StatefulSet": {"QDRANT__SERVICE__API_KEY"}, "CronJob": {"QDRANT_API_KEY"}}
    # the Helm values read the same Secret
    values = _docs(DEPLOY / "helm" / "values-qdrant.yaml")[0]
    (ref,) = list(_walk(values, "secretKeyRef"))
    assert ref["name"] in secrets and values["config"]["cluster"]["enabled"] is True


def test_qdrant_statefulset_has_a_headless_service_and_probes():
    sts = _by_kind("StatefulSet")["qdrant"]
    services = _by_kind("Service")
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in (s for name, s in services.items() if name != "mmrag-server"):  # the server has its own Deployment
        assert svc["spec"]["selector"].items() <= labels.items()
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("qdrant/qdrant:")
    assert {p["containerPort"] for p in c["ports"]} == {6333, 6334, 6335}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/qdrant/storage"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == c["volumeMounts"][0]["name"]


def test_compose_has_qdrant_a_job_and_a_scheduler():
    doc = _docs(COMPOSE)[0]
    services = doc["services"]
    assert set(services) == {"qdrant", "mmrag", "scheduler", "api"}
    q = services["qdrant"]
    assert q["image"].startswith("qdrant/qdrant:")
    assert {"6333:6333", "6334:6334"} <= set(q["ports"])
    assert q["healthcheck"]["test"][0] == "CMD-SHELL" and "/readyz" in q["healthcheck"]["test"][1]
    assert any(v.endswith(":/qdrant/storage") for v in q["volumes"])
    job, sched = services["mmrag"], services["scheduler"]
    assert job["command"] == ["run", "pipelines/photos.yaml"]  # the image's ENTRYPOINT is mmrag
    assert (REPO / job["command"][1]).is_file()
    assert sched["command"][0] == "schedule" and (REPO / sched["command"][1]).is_dir()
    for svc in (job, sched):
        assert svc["environment"]["QDRANT_URL"] == "http://qdrant:6333"
        assert svc["depends_on"]["qdrant"]["condition"] == "service_healthy"
        assert any(_volume(v) == ("${CORPUS_DIR:-./corpus}", "/corpus", "ro") for v in svc["volumes"])
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile").resolve()
    # the scheduler and the job share the home volume: that is what makes the lock work between them
    home = lambda s: [_volume(v) for v in s["volumes"] if _volume(v)[1] == "/data/mmrag"]  # noqa: E731
    assert home(job) == home(sched) == [("mmrag_home", "/data/mmrag", "rw")]
    _check_named_volumes(doc)


def _volume(spec: str) -> tuple[str, str, str]:
    """Compose short syntax `source:target[:mode]` -> (source, target, mode); the source may hold ${X:-y}."""
    parts = spec.rsplit(":", 2)
    if parts[-1] in ("ro", "rw", "z", "Z"):
        return ":".join(parts[:-2]), parts[-2], parts[-1]
    src, target = spec.rsplit(":", 1)
    return src, target, "rw"


def _check_named_volumes(doc: dict) -> None:
    declared = set(doc.get("volumes") or {})
    for svc in doc["services"].values():
        for v in svc.get("volumes", []):
            src = _volume(v)[0]
            if not src.startswith((".", "/", "$")):
                assert src in declared, f"volume {src} is not declared"


def test_cluster_compose_bootstraps_three_nodes_from_the_first():
    doc = _docs(CLUSTER)[0]
    nodes = {n: s for n, s in doc["services"].items() if s.get("image", "").startswith("qdrant/qdrant:")}
    assert len(nodes) == 3
    uris, bootstraps = {}, {}
    for name, svc in nodes.items():
        assert svc["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        cmd = svc["command"]
        uris[name] = cmd[cmd.index("--uri") + 1]
        assert uris[name] == f"http://{name}:6335"
        if "--bootstrap" in cmd:
            bootstraps[name] = cmd[cmd.index("--bootstrap") + 1]
    (first,) = set(nodes) - set(bootstraps)
    assert set(bootstraps.values()) == {uris[first]} and len(bootstraps) == 2
    assert len({tuple(s["volumes"]) for s in nodes.values()}) == 3  # one storage per node
    job = doc["services"]["mmrag"]
    env = job["environment"]
    assert int(env["MMRAG_SHARD_NUMBER"]) % 3 == 0 and 1 <= int(env["MMRAG_REPLICATION_FACTOR"]) <= 3
    _check_named_volumes(doc)


def test_dockerfile():
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()]
    code = [ln for ln in lines if ln and not ln.startswith("#")]
    args = dict(re.match(r"ARG (\w+)=(.*)", ln).groups() for ln in code if ln.startswith("ARG "))
    froms = [ln for ln in code if ln.startswith("FROM ")]
    assert froms == ["FROM python:${PYTHON_VERSION}-slim"] and args["PYTHON_VERSION"] == "3.11"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    text = "\n".join(code)
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    assert "pip install --constraint /tmp/constraints.txt \".[serve]\"" in text  # mmrag serve needs the serve extra
    assert "torchvision" not in text
    users = [ln for ln in code if ln.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("root", "0")
    assert code[-2:] == ['ENTRYPOINT ["mmrag"]', 'CMD ["--help"]']
    # the CUDA variant is the documented build arg
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in (DEPLOY / "Dockerfile").read_text()


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_compose_available(), reason="docker compose is not available here")
@pytest.mark.parametrize("path", [COMPOSE, CLUSTER])
def test_docker_compose_config_is_valid(path):
    res = subprocess.run(["docker", "compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr


def test_server_deployment_service_probes_and_api_key_secret():
    dep = _by_kind("Deployment")["mmrag-server"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "serve" and "--host" in c["args"] and c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in c["env"]}
    assert env["MMRAG_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] in _by_kind("Secret")
    assert env["QDRANT_URL"]["value"].startswith("http://qdrant:")
    svc = _by_kind("Service")["mmrag-server"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    api = _docs(COMPOSE)[0]["services"]["api"]
    assert api["command"][0] == "serve" and "8000:8000" in api["ports"] and "/readyz" in " ".join(api["healthcheck"]["test"])


def _pod_templates(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return out


def test_manifests_validate_with_kubernetes_validate_and_the_rayjob_pods_as_core_v1():
    """Core kinds against the Kubernetes schemas. KubeRay's RayJob is a CRD, absent from those
    schemas: its pod templates (all that Kubernetes itself runs) are validated as core/v1
    PodTemplate objects, and the RayJob's own fields are checked by hand below."""
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version()
    checked = 0
    for obj in _k8s_objects():
        if obj["apiVersion"].startswith("ray.io/"):
            for name, template in _pod_templates(obj).items():
                kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"rayjob-{name}"},
                             "template": template}, version, strict=True)
                checked += 1
        else:
            kv.validate(obj, version, strict=True)
            checked += 1
    assert checked == len(_k8s_objects()) - 1 + 2  # the RayJob counted as its head and GPU group

    # A broken pod template is caught: the validation is not a no-op.
    with pytest.raises(kv.ValidationError):
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                     "template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "http"}]}]}}},
                    version, strict=True)


def test_rayjob_has_a_cpu_head_a_gpu_group_and_qdrant_as_the_sink():
    job = _by_kind("RayJob")["mmrag-ingest-photos"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert "--engine ray" in spec["entrypoint"] and "--ray-address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"])
    (gpu,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    qdrant = _by_kind("Service")
    for template in _pod_templates(job).values():
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        host = env["QDRANT_URL"]["value"].split("//")[1].split(":")[0]
        assert host in qdrant
        assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] in _by_kind("Secret")

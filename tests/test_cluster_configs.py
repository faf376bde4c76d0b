"""The cluster definitions users deploy, checked by machine: launcher YAMLs with Ray's own
schema, KubeRay manifests with the operator's CRD schemas (closed, so a misspelled key fails),
the RayService's Serve config against the code that writes it, and the worker groups' custom
resources against what the jobs ask (deploy/egecmp-cluster.yaml). Offline, no credentials."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import ray
import yaml

from egecmp_ray.config import load_config
from egecmp_ray.serve.app import serve_config

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_CONFIGS = [REPO / "cluster.yaml", REPO / "deploy" / "gcp.yaml", REPO / "deploy" / "onprem.yaml"]
MANIFESTS = {"rayjob.yaml": "ray.io_rayjobs.yaml", "rayservice.yaml": "ray.io_rayservices.yaml"}
CRD_DIR = Path(os.environ.get("EGECMP_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay"))
JOB_CONFIG = REPO / "deploy" / "egecmp-cluster.yaml"
IMAGE_REPO_DIR = "/home/ray/egecmp-ray"  # deploy/Dockerfile's WORKDIR


def _launcher_check(doc: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(doc))
    validate_config(prepared)
    return prepared


def _group_resources() -> set[str]:
    cluster = load_config(JOB_CONFIG).cluster
    return {cluster.cpu_resource, cluster.gpu_resource}


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_schema(path):
    prepared = _launcher_check(yaml.safe_load(path.read_text()))
    assert prepared["cluster_name"] == "egecmp"


@pytest.mark.parametrize("where", ["top", "node_type", "docker"])
def test_a_misspelled_launcher_key_fails(where):
    doc = yaml.safe_load((REPO / "cluster.yaml").read_text())
    if where == "top":
        doc["max_worker"] = 3
    elif where == "node_type":
        doc["available_node_types"]["gpu_workers"]["min_worker"] = 1
    else:
        doc["docker"]["imag"] = "x"
    with pytest.raises(Exception, match="Additional properties are not allowed"):
        _launcher_check(doc)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS[:2], ids=lambda p: p.name)
def test_cloud_configs_have_both_groups_on_the_pinned_ray_image(path):
    doc = _launcher_check(yaml.safe_load(path.read_text()))
    assert doc["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    types = doc["available_node_types"]
    advertised = {name: set(t.get("resources", {})) - {"CPU", "GPU"} for name, t in types.items()}
    assert advertised[doc["head_node_type"]] == set()
    assert types[doc["head_node_type"]]["resources"]["CPU"] == 0  # drivers only
    workers = [a for name, a in advertised.items() if name != doc["head_node_type"]]
    assert sorted(map(sorted, workers)) == sorted([[r] for r in _group_resources()])
    assert all(types[n].get("max_workers", 0) >= 1 for n in types if n != doc["head_node_type"])


def test_onprem_workers_advertise_the_groups():
    doc = _launcher_check(yaml.safe_load((REPO / "deploy" / "onprem.yaml").read_text()))
    start = " ".join(doc["worker_start_ray_commands"])
    assert all(f'"{r}"' in start for r in _group_resources())


def test_dockerfile_builds_on_the_pinned_ray_image():
    first = (REPO / "deploy" / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    assert first == f"rayproject/ray:{ray.__version__}-py311-gpu"


def _closed(schema):
    """Objects that list their properties and say nothing of others take no others (the API
    server prunes unknown fields silently; a test should fail on them instead)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd_validator(crd_file: str):
    jsonschema = pytest.importorskip("jsonschema")
    path = CRD_DIR / crd_file
    if not path.is_file():
        pytest.skip(f"KubeRay CRD schemas not found at {CRD_DIR} (set EGECMP_KUBERAY_CRDS)")
    crd = yaml.safe_load(path.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_closed(v1["schema"]["openAPIV3Schema"]))


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def _manifest(name: str) -> dict:
    return yaml.safe_load((REPO / "deploy" / "kuberay" / name).read_text())


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_matches_the_crd(name):
    validator = _crd_validator(MANIFESTS[name])
    doc = _manifest(name)
    assert _errors(validator, doc) == []
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"].startswith("egecmp-ray:")
    advertised = {r for g in spec["workerGroupSpecs"] for r in g.get("resources", {})}
    assert advertised <= _group_resources() and spec["workerGroupSpecs"]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_a_misspelled_kuberay_key_fails(name):
    validator = _crd_validator(MANIFESTS[name])
    doc = _manifest(name)
    _cluster_spec(doc)["workerGroupSpecs"][0]["maxReplica"] = 3
    doc["spec"]["entrypointt" if name == "rayjob.yaml" else "serveConfigV3"] = "x"
    errors = _errors(validator, doc)
    assert len(errors) == 2 and all("Additional properties" in e for e in errors), errors


def test_rayjob_runs_the_pretrain_job_with_the_cluster_config():
    entry = _manifest("rayjob.yaml")["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "jobs/pretrain.py"]
    assert (REPO / entry[1]).is_file()
    assert (REPO / entry[entry.index("--config") + 1]).resolve() == JOB_CONFIG


def test_rayservice_serve_config_is_what_the_code_writes():
    from ray.serve.schema import ServeDeploySchema

    text = _manifest("rayservice.yaml")["spec"]["serveConfigV2"]
    doc = yaml.safe_load(text)
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    args = app["args"]
    config_in_repo = REPO / Path(args["config"]).relative_to(IMAGE_REPO_DIR)
    assert config_in_repo == JOB_CONFIG
    cfg = load_config(config_in_repo, args["overrides"])  # the builder's own load: must be valid
    assert cfg.cluster.gpu_resource  # encoder replicas land on the GPU group
    assert doc == serve_config(cfg, args["model"], args.get("collection"), args["config"],
                               args["overrides"])

"""The users' commands as written, on a real multi-node Ray cluster on this machine: a head
started with ``ray start --head`` (drivers only, as in cluster.yaml) and one node per worker
group advertising that group's custom resource. Jobs go in through ``ray job submit
--working-dir .``; placement is read back from Ray's state API. Each cluster has its own
RAY_TMPDIR and ports, and is torn down by the process groups it started (never ``ray stop``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egecmp_ray.local_cluster import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[1]
GROUPS = ["cluster.cpu_resource=egecmp_cpu", "cluster.gpu_resource=egecmp_gpu"]

# Run as a driver on the cluster: which node (by its group resource) ran each task and actor.
PLACEMENT = """
import json, ray
from ray.util.state import list_actors, list_nodes, list_tasks
ray.init(logging_level="ERROR")
group = {n.node_id: ",".join(sorted(k for k in n.resources_total if k.startswith("egecmp_")))
         or "head" for n in list_nodes(detail=True)}
tasks = [[t.name, group.get(t.node_id, "?")] for t in list_tasks(detail=True, limit=10000)
         if t.node_id]
actors = [[a.class_name, group.get(a.node_id, "?")] for a in list_actors(detail=True, limit=10000)
          if a.node_id]
print("PLACEMENT " + json.dumps({"tasks": tasks, "actors": actors}))
"""


def _ok(result) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def _start(cluster: LocalCluster):
    return (cluster.add_node("cpu", 1, {"egecmp_cpu": 1000}),
            cluster.add_node("gpu", 1, {"egecmp_gpu": 1000}))


@pytest.mark.slow
def test_job_submit_lands_on_the_groups_and_pretrain_survives_losing_its_node(prepared):
    """`ray job submit` preprocess, then pretrain; the GPU-group node dies mid-run, a new one
    joins, the run goes on from its checkpoint; Ray's state API shows where everything ran."""
    tmp, _, _, _ = prepared
    prep, run = tmp / "cluster-prep", tmp / "cluster-run"
    with LocalCluster() as cluster:
        _, gpu = _start(cluster)
        out = _ok(cluster.submit(["python", "jobs/preprocess.py", "--input", str(tmp / "synth"),
                                  "--out", str(prep), "--preset", "tiny", *GROUPS], str(REPO)))
        assert "succeeded" in out and "quarantined" in out
        job = subprocess.Popen(
            [cluster.ray, "job", "submit", "--address", cluster.dashboard, "--working-dir",
             str(REPO), "--", "python", "jobs/pretrain.py", "--data", str(prep), "--out", str(run),
             "--preset", "tiny", "train.max_steps=16", "train.checkpoint_every_steps=4", *GROUPS],
            env=cluster.env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        metrics = run / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.is_file() else []
            if any(json.loads(x).get("step", 0) >= 6 for x in lines):
                break
            time.sleep(0.5)
        assert job.poll() is None, "the run ended before the node could be removed"
        cluster.remove_node(gpu)
        cluster.add_node("gpu2", 1, {"egecmp_gpu": 1000})
        out, _ = job.communicate(timeout=600)
        assert job.returncode == 0, out[-4000:]
        line = _ok(cluster.run([sys.executable, "-c", PLACEMENT])).split("PLACEMENT ")[-1]
    events = [json.loads(x) for x in metrics.read_text().splitlines()]
    resumed = [e for e in events if e.get("event") == "resumed"]
    assert resumed and resumed[0]["step"] >= 4, events
    assert json.loads((run / "pretrain.json").read_text())["steps"] == 16
    assert (run / "model" / "model.safetensors").is_file()
    placement = json.loads(line.splitlines()[0])
    data_tasks = [(n, g) for n, g in placement["tasks"]
                  if any(k in n for k in ("ReadParquet", "MapBatches", "Write", "entity_graph"))]
    assert data_tasks and {g for _, g in data_tasks} == {"egecmp_cpu"}, data_tasks
    # the first train workers (on the node that died) and their replacements on the new one
    workers = [g for name, g in placement["actors"] if name == "RayTrainWorker"]
    assert len(workers) >= 2 and set(workers) == {"egecmp_gpu"}, placement["actors"]


@pytest.mark.slow
def test_serve_replicas_that_do_not_fit_add_nodes_and_idle_nodes_go(prepared, tiny_model_dir):
    """Ray's fake multi-node provider as the cloud: Serve asks for two encoder replicas on the
    GPU group, none fits the head (drivers only), the autoscaler adds two nodes; after the app
    is shut down they go once idle."""
    from egecmp_ray.config import load_config
    from egecmp_ray.retrieval.indexing import run_index
    from egecmp_ray.serve.app import wait_ready

    tmp, _, _, _ = prepared
    db = tmp / "autoscale-items.db"
    run_index(str(tiny_model_dir), str(tmp / "synth"),
              load_config(preset="tiny", overrides=[f"index.milvus_uri={db}"]))
    gpu_group = {"gpu_workers": {"resources": {"CPU": 1, "egecmp_gpu": 1000}, "max_workers": 2}}
    with LocalCluster(autoscaling=gpu_group, idle_timeout_s=10) as cluster:
        url = cluster.serve(tiny_model_dir, db, free_port(), 2, "--preset", "tiny", GROUPS[1])
        # The dashboard's node table lags the GCS by a few seconds.
        deadline = time.monotonic() + 60
        while len(cluster.alive_nodes()) < 3 and time.monotonic() < deadline:
            time.sleep(1)
        nodes = cluster.alive_nodes()
        assert len(nodes) == 3, nodes  # the head + two nodes for the replicas
        # (the dashboard camel-cases resource names: egecmp_gpu reads egecmpGpu)
        added = [{k.lower().replace("_", "") for k in n["resourcesTotal"]}
                 for n in nodes if not n.get("isHeadNode")]
        assert len(added) == 2 and all("egecmpgpu" in r for r in added), nodes
        wait_ready(url, timeout_s=60)
        cluster.serve_shutdown()
        deadline = time.monotonic() + 120
        while len(cluster.alive_nodes()) > 1 and time.monotonic() < deadline:
            time.sleep(2)
        assert len(cluster.alive_nodes()) == 1, "idle nodes were not removed"


def test_node_ports_are_distinct_and_never_handed_out_twice(monkeypatch):
    """A node's six component ports are chosen together: one at a time they could repeat,
    and Ray refuses the node (seen once: "runtime_env_agent is trying to use a port number
    ... that is used by other components")."""
    from egecmp_ray import local_cluster

    class Kernel:  # hands a closed port out again at once, as a real kernel may
        free = [41001, 41001, 41002, 41001, 41002, 41003, 41004, 41005, 41006, 41007, 41008]
        bound: set[int] = set()

    class FakeSocket:
        def bind(self, addr):
            self.port = next(p for p in Kernel.free if p not in Kernel.bound)
            Kernel.bound.add(self.port)

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            Kernel.bound.discard(self.port)

    monkeypatch.setattr(local_cluster.socket, "socket", FakeSocket)
    monkeypatch.setattr(local_cluster, "_handed_out", set())
    first = local_cluster.free_ports(3)
    assert first == [41001, 41002, 41003]  # distinct although the kernel repeats itself
    assert local_cluster.free_ports(2) == [41004, 41005]  # none of the first handed out again


def test_ray_workers_temporary_files_go_with_their_cluster(ray_session, tmp_path):
    """Ray kills its workers, so what they leave in the temp dir (multiprocessing dirs, PyG's
    generated modules, downloads) is never removed by them: the test session's workers and a
    LocalCluster's nodes write it under a directory that goes with the session or cluster."""
    import os
    import tempfile

    theirs = ray_session.get(ray_session.remote(lambda: tempfile.gettempdir()).remote())
    assert theirs != tempfile.gettempdir()
    assert os.path.basename(theirs).startswith("egecmp-tests-")
    cluster = LocalCluster(tmpdir=str(tmp_path))
    assert cluster.env["TMPDIR"] == str(tmp_path / "tmp") and (tmp_path / "tmp").is_dir()
    assert cluster.env["RAY_TMPDIR"] == str(tmp_path)


# A driver of its own (the session's cluster runs with Ray's default): does a worker a first
# wave of tasks started beyond one per CPU outlive 4 s of idleness? Does the node export
# Prometheus metrics (-1: no port)?
IDLE_WORKERS = """
import os, time, psutil, ray
from egecmp_ray.runtime import init_ray
init_ray(num_cpus=2, keep_idle_workers=True)

@ray.remote(num_cpus=0.25)
def worker_pid():
    time.sleep(1.0)
    return os.getpid()

first = set(ray.get([worker_pid.remote() for _ in range(8)]))
time.sleep(4.0)  # idle past Ray's own 1 s

def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

print(ray.nodes()[0]["MetricsExportPort"], len(first), sum(map(alive, first)))
"""


def test_a_preprocess_clusters_idle_workers_outlive_a_stage_and_it_exports_no_metrics():
    """The preprocess job's local cluster keeps the workers one stage started beyond one per
    CPU for the next stage, instead of killing them after Ray's 1 s of idleness and starting
    new ones (``runtime.IDLE_WORKER_KEEP_MS``: each start cost a stage ~3 s of CPU); like every
    batch job's, it records no Prometheus metrics (``runtime.METRICS_OFF``)."""
    import os
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="egr-")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_idle_worker_killing_time_threshold_ms",
                        "RAY_enable_metrics_collection")}
    try:
        out = subprocess.run([sys.executable, "-c", IDLE_WORKERS], capture_output=True,
                             text=True, timeout=300, cwd=REPO,
                             env={**env, "RAY_TMPDIR": tmp, "TMPDIR": tmp})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    port, started, alive = map(int, out.stdout.split()[-3:])
    assert port == -1
    assert started > 2  # more workers than the cluster's CPUs (Ray's soft limit)
    assert alive == started

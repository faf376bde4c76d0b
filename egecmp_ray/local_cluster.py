"""A multi-node Ray cluster on one machine, made of real ``ray start`` processes.

Tests and benchmarks use it to run the users' exact commands (``ray job submit``, jobs
connecting with ``RAY_ADDRESS``) against a head and worker nodes that advertise the worker
groups' custom resources of ``cluster.yaml``. Each node is one ``ray start --block`` in its own
process session with its own ports; the cluster has its own ``RAY_TMPDIR``. Teardown ends
exactly the processes each node started (its process group, by id): never ``ray stop``, which
ends every Ray on the machine. A node can be removed mid-run to test recovery.

The job's ``python`` is the one whose ``bin`` is first on ``PATH`` when the head starts (Ray
starts the job driver with the head's environment): the nodes start with this interpreter's
``bin`` first, as the README tells users to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

READY_TIMEOUT_S = 120.0


_handed_out: set[int] = set()  # ports this process gave a node: never given twice


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports, none handed out before by this process. The sockets stay
    bound until all ``n`` are chosen: ports picked one at a time (bind, close, bind again) can
    come back equal, and Ray refuses a node whose components share a port ("Ray component
    runtime_env_agent is trying to use a port number ... that is used by other components")."""
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
        _handed_out.update(ports)
        return ports
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int  # its raylet's node-manager port: how the GCS's node table names it here

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalCluster:
    """``with LocalCluster() as c: c.add_node("cpu", 1, {"egecmp_cpu": 1000}); c.submit(...)``"""

    def __init__(self, head_cpus: float = 0, tmpdir: Optional[str] = None,
                 autoscaling: Optional[Mapping[str, Mapping]] = None, idle_timeout_s: float = 15,
                 head_resources: Optional[Mapping[str, float]] = None):
        # Short: Ray's socket paths under RAY_TMPDIR must stay under 108 bytes.
        self.tmp = Path(tmpdir or tempfile.mkdtemp(prefix="egr-"))
        self._own_tmp = tmpdir is None  # removed at shutdown (Ray's logs with it)
        self.port, self.dashboard_port = free_ports(2)
        self.head_cpus, self.head_resources = head_cpus, dict(head_resources or {})
        self.nodes: list[Node] = []
        bin_dir = str(Path(sys.executable).parent)
        self.ray = str(Path(bin_dir) / "ray")  # this environment's, as jobs must use it too
        # TMPDIR: the nodes' and their workers' temporary files, under the cluster's tmp
        (self.tmp / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "RAY_TMPDIR": str(self.tmp), "TMPDIR": str(self.tmp / "tmp"),
                    "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.setdefault("RAY_AUTH_MODE", "disabled")  # see README, "Ray's token auth"
        for var in ("RAY_ADDRESS", "RAY_JOB_ID"):
            self.env.pop(var, None)
        self.autoscaling_config: Optional[Path] = None
        if autoscaling:
            self.autoscaling_config = self.tmp / "fake-cluster.yaml"
            self.autoscaling_config.write_text(json.dumps(fake_cluster_config(
                autoscaling, self.address, head_cpus, idle_timeout_s), indent=2))
            self.env["RAY_FAKE_CLUSTER"] = "1"

    @property
    def address(self) -> str:
        """The GCS address drivers connect to (``RAY_ADDRESS``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        """The HTTP address ``ray job submit --address`` takes."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: Sequence[str], cpus: float,
               resources: Mapping[str, float]) -> Node:
        log = self.tmp / f"node-{name}.log"
        port, objects, metrics, agent, agent_grpc, runtime_env = free_ports(6)
        cmd = [self.ray, "start", "--block", "--disable-usage-stats",
               f"--num-cpus={cpus:g}", f"--resources={json.dumps(dict(resources))}",
               "--node-ip-address=127.0.0.1", f"--node-manager-port={port}",
               f"--object-manager-port={objects}", f"--metrics-export-port={metrics}",
               f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={runtime_env}", *args]
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        node = Node(name, proc, log, port)
        self.nodes.append(node)
        return node

    def start_head(self) -> "LocalCluster":
        head = self._start("head", ["--head", f"--port={self.port}",
                             f"--dashboard-port={self.dashboard_port}",
                             "--dashboard-host=127.0.0.1",
                             f"--ray-client-server-port={free_port()}",
                             "--include-dashboard=true",
                             *([f"--autoscaling-config={self.autoscaling_config}"]
                               if self.autoscaling_config else [])], self.head_cpus,
                           self.head_resources)
        self._wait(lambda: self._dashboard_up() and head.port in self.alive_ports(), "the head")
        return self

    def add_node(self, name: str, cpus: float, resources: Mapping[str, float],
                 attempts: int = 3) -> Node:
        """A worker node with ``resources`` (a group's custom resource), joined and ready.
        A raylet that times out registering (a loaded 2-core machine) is started again."""
        for attempt in range(1, attempts + 1):
            node = self._start(name, [f"--address={self.address}"], cpus, resources)
            try:
                self._wait(lambda: node.port in self.alive_ports(), f"node {name} to join")
                return node
            except RuntimeError:
                if node.alive() or attempt == attempts:
                    raise
                self.nodes.remove(node)
        raise AssertionError("unreachable")

    def remove_node(self, node: Node, grace_s: float = 3.0) -> None:
        """Kill one node's processes (its process group): a machine lost mid-run."""
        _end_group(node.proc, grace_s)
        self.nodes.remove(node)

    def alive_nodes(self) -> list[dict]:
        """The raylets the GCS counts alive (a removed node stays alive there until its
        heartbeats time out): ``nodeId``, ``nodeManagerPort``, ``resourcesTotal``, ..."""
        try:
            with urllib.request.urlopen(f"{self.dashboard}/nodes?view=summary", timeout=5) as r:
                summary = json.load(r)["data"]["summary"]
        except (OSError, ValueError, KeyError):
            return []
        return [n["raylet"] for n in summary if n.get("raylet", {}).get("state") == "ALIVE"]

    def alive_ports(self) -> set[int]:
        return {n.get("nodeManagerPort") for n in self.alive_nodes()}

    def _dashboard_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            dead = [n for n in self.nodes if not n.alive()]
            if dead or time.monotonic() > deadline:
                tail = dead[0].log.read_text(errors="replace")[-2000:] if dead else ""
                raise RuntimeError(f"local cluster: gave up waiting for {what}"
                                   f"{' (node ' + dead[0].name + ' exited)' if dead else ''}\n{tail}")
            time.sleep(0.5)

    def run(self, args: Sequence[str], timeout_s: float = 600, driver: bool = True,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
        """Run a command in the cluster's environment (``RAY_ADDRESS`` set when ``driver``)."""
        env = dict(self.env, **({"RAY_ADDRESS": self.address} if driver else {}))
        return subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout_s)

    def submit(self, entrypoint: Sequence[str], working_dir: str,
               timeout_s: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir DIR -- ENTRYPOINT`` to this cluster, waiting for it."""
        return self.run([self.ray, "job", "submit", "--address", self.dashboard,
                         "--working-dir", working_dir, "--", *entrypoint],
                        timeout_s=timeout_s, driver=False, cwd=working_dir)

    def serve(self, model_dir: str, milvus_uri: str, port: int, replicas: int,
              *overrides: str, timeout_s: float = 300) -> str:
        """``egecmp serve --detach`` on this cluster with ``replicas`` encoder replicas (one CPU
        each); returns the app's URL once it answers ``/readyz``. Raises with the output."""
        egecmp = str(Path(sys.executable).parent / "egecmp")
        r = self.run([egecmp, "serve", "--model", str(model_dir), "--milvus-uri",
                      str(milvus_uri), "--port", str(port), "--detach",
                      f"serve.min_replicas={replicas}", f"serve.max_replicas={replicas}",
                      "serve.cpus_per_replica=1", *overrides], timeout_s=timeout_s)
        if r.returncode != 0:  # Serve's log is long: its error lines, then the tails
            errors = dict.fromkeys(x for x in r.stderr.splitlines()
                                   if any(k in x for k in ("Error", "Exception", "Traceback")))
            raise RuntimeError(f"egecmp serve failed ({r.returncode}):\n"
                               + "\n".join(list(errors)[-30:]) + "\n--- stdout:\n"
                               + r.stdout[-2000:] + "\n--- stderr:\n" + r.stderr[-3000:])
        return f"http://127.0.0.1:{port}"

    def serve_shutdown(self) -> None:
        """End every Serve app on this cluster (its replicas' nodes then go idle)."""
        r = self.run([sys.executable, "-c",
                      "import ray; from ray import serve; ray.init(logging_level='ERROR'); "
                      "serve.shutdown()"], timeout_s=120)
        if r.returncode != 0:
            raise RuntimeError(f"serve.shutdown() failed:\n{(r.stdout + r.stderr)[-3000:]}")

    def shutdown(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            _end_group(node.proc)
        self.nodes.clear()
        _end_stragglers(str(self.tmp))
        if self._own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self if self.nodes else self.start_head()  # started already: just managed

    def __exit__(self, *exc) -> None:
        self.shutdown()


def fake_cluster_config(worker_types: Mapping[str, Mapping], gcs_address: str, head_cpus: float,
                        idle_timeout_s: float) -> dict:
    """An autoscaling config for Ray's fake multi-node provider: worker node types (``{name:
    {"resources": {...}, "max_workers": n}}``) that the autoscaler starts as raylets on this
    machine when demand does not fit, and stops when idle for ``idle_timeout_s``."""
    types = {"ray.head.default": {"resources": {"CPU": head_cpus}, "max_workers": 0,
                                  "node_config": {}}}
    for name, spec in worker_types.items():
        types[name] = {"resources": dict(spec["resources"]), "node_config": {},
                       "min_workers": int(spec.get("min_workers", 0)),
                       "max_workers": int(spec.get("max_workers", 1))}
    return {"cluster_name": "egecmp-fake", "max_workers": sum(t["max_workers"] for t in types.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_s / 60.0,
            "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                         "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": "ray.head.default",
            "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": []}


def _end_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the node's process group, SIGKILL what is left after ``grace_s`` (Ray's GCS and
    monitor do not all exit on SIGTERM)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                proc.poll()
                return
            time.sleep(0.2)
    proc.poll()


def _end_stragglers(tmpdir: str) -> None:
    """Ray's workers run in sessions of their own and exit on their own once their raylet is
    gone; any still there a moment later are ended here: the processes whose environment
    names this cluster's RAY_TMPDIR (they descend from its nodes), by id."""
    import psutil

    time.sleep(1.0)
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and p.environ().get("RAY_TMPDIR") == tmpdir:
                p.kill()
        except (psutil.Error, OSError):
            continue


def _group_alive(pgid: int) -> bool:
    import psutil

    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


"""Which worker group a piece of work lands on (``cluster.*``).

A cluster from ``cluster.yaml`` or ``deploy/`` has a CPU worker group (Ray Data
preprocessing, ingest, index embedding) and a GPU worker group (training, encoder replicas).
Each group's nodes advertise a custom resource (``egecmp_cpu`` / ``egecmp_gpu`` there); work
asks for one unit of its group's resource, so Ray places it there and the autoscaler grows the
group that is short. The nodes advertise a large amount (1,000): the resource says *where*, the
CPUs and GPUs still say *how much*.

Ray Data stages are built deep inside functions that take one config section; the command line
sets the process's CPU group once from the loaded config (:func:`configure`) and every stage asks
through :func:`cpu_task`. The trainer and the Serve app hold the whole config and ask
:func:`gpu_worker` with it (the Serve builder runs in Serve's controller, not the CLI's
process). Unset (the default, and local runs): no resource is asked.
"""

from __future__ import annotations

from typing import Any

from egecmp_ray.config import ClusterConfig

_groups = ClusterConfig()


def configure(cluster: ClusterConfig) -> None:
    """Set the groups this process's work asks for (the CLI does it from ``cfg.cluster``)."""
    global _groups
    _groups = ClusterConfig(cpu_resource=cluster.cpu_resource, gpu_resource=cluster.gpu_resource)


def _ask(name: str) -> dict[str, float]:
    return {name: 1.0} if name else {}


def cpu_task() -> dict[str, Any]:
    """Ray remote args for a Ray Data stage or task of the CPU group (``**cpu_task()``)."""
    ask = _ask(_groups.cpu_resource)
    return {"resources": ask} if ask else {}


def gpu_worker(cluster: ClusterConfig) -> dict[str, float]:
    """Custom resources of one train worker or encoder replica (the GPU group)."""
    return _ask(cluster.gpu_resource)

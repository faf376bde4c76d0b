"""Fit the trainer to the cluster before it starts. Ray Train's workers and the Ray Data tasks
that read their shards share the CPUs: a request that leaves the readers none does not fail, it
hangs ("Cluster resources are not enough to run any task ... may hang forever")."""

from __future__ import annotations

import logging
import math
from typing import Mapping

from egecmp_ray.config import InputError, TrainConfig

log = logging.getLogger(__name__)

READER_CPUS = 1.0  # kept free for Ray Data's read tasks (each asks for one CPU)


def fit_train_cpus(train: TrainConfig, use_gpu: bool, cluster: Mapping[str, float],
                   local: bool) -> float:
    """CPUs each train worker gets: ``train.cpus_per_worker`` when the cluster has them plus
    ``READER_CPUS``; on a local cluster the request is scaled down to fit (and said so); on a
    remote one, an error naming the keys to change."""
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    if use_gpu and gpus < train.workers:
        raise InputError(f"train.workers={train.workers} GPU workers, but the cluster has "
                         f"{gpus:g} GPUs: lower train.workers, set train.use_gpu=false, or add "
                         "GPU nodes")
    want = train.workers * train.cpus_per_worker
    room = cpus - READER_CPUS
    if want <= room:
        return train.cpus_per_worker
    if local and room > 0:
        fitted = math.floor(room / train.workers * 100) / 100
        if fitted > 0:
            log.warning("train.workers=%d x train.cpus_per_worker=%g = %g CPUs do not fit this "
                        "%g-CPU local cluster with %g left for Ray Data's readers: each worker "
                        "gets %g CPUs instead", train.workers, train.cpus_per_worker, want, cpus,
                        READER_CPUS, fitted)
            return fitted
    raise InputError(f"train.workers={train.workers} x train.cpus_per_worker="
                     f"{train.cpus_per_worker:g} = {want:g} CPUs, but the cluster has {cpus:g} "
                     f"and Ray Data's readers need {READER_CPUS:g} free (else the run hangs): "
                     "lower train.workers or train.cpus_per_worker, or add nodes")


def worker_runtime_env(train: TrainConfig) -> dict[str, dict[str, str]]:
    """The train workers' runtime env: their nice value (``train.worker_niceness``; each Ray
    worker process reads ``RAY_worker_niceness`` as it starts). Ray's other workers keep 15."""
    return {"env_vars": {"RAY_worker_niceness": str(train.worker_niceness)}}

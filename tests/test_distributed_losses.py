"""InfoNCE across two real gloo processes: features are gathered with gradients, and a worker
whose batch has no images still joins every collective (a hang here would stall training)."""

import json
import os
import subprocess
import sys
import textwrap

from egecmp_ray.local_cluster import free_port

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from egecmp_ray.model.losses import info_nce

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    n = 0 if rank == 0 else 3  # rank 0: a batch without images
    a = torch.randn(n, 4, generator=g, requires_grad=True)
    b = torch.randn(n, 4, generator=g, requires_grad=True)
    loss = info_nce(a, b, 0.1)
    loss.backward()
    # by hand: all rows live on rank 1, so its loss is the plain 3-pair InfoNCE
    local = 0.0
    if n:
        x, y = torch.nn.functional.normalize(a.detach(), dim=-1), torch.nn.functional.normalize(b.detach(), dim=-1)
        t = torch.arange(n)
        ce = torch.nn.functional.cross_entropy
        local = (0.5 * (ce(x @ y.T / 0.1, t) + ce(y @ x.T / 0.1, t))).item()
    json.dump({"loss": loss.item(), "local": local,
               "grad": a.grad.abs().sum().item() if n else 0.0}, open(sys.argv[1], "w"))
    dist.destroy_process_group()
""")


def test_info_nce_across_two_workers_one_without_images(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{rank}.json")],
                                      env=env))
    for p in procs:
        assert p.wait(timeout=120) == 0
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2))
    assert r0["loss"] == 0.0  # nothing local to score, but it ran the gathers
    assert abs(r1["loss"] - r1["local"]) < 1e-5 and r1["grad"] > 0

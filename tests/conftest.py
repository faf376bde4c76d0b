"""One local Ray cluster for the whole test session; helpers shared by tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from egecmp_ray.local_cluster import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray 2.60 turns token auth on for a local ray.init(); the tests' own cluster needs none.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


# s3:// in tests is a moto S3 server on loopback (the `s3` fixture starts it on first use).
# Object stores are configured from the environment, as users configure theirs; set before
# Ray starts, so the session's workers see the same endpoint and credentials.
S3_PORT = free_port()
os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
                   "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEV_FILE = SHARED / "data" / "product1m" / "product1m_dev_ossurl_v2.txt"


def pytest_sessionfinish(session):
    """PyG writes the module it generates for a message-passing class (GCNConv's propagate) to
    the temp dir and never removes it; remove the ones this process loaded. (The jobs and Ray
    workers the tests start write theirs to scratch dirs of their own.)"""
    tmp = os.path.realpath(tempfile.gettempdir())
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.startswith("torch_geometric") and path and \
                os.path.dirname(os.path.realpath(path)) == tmp:
            with contextlib.suppress(OSError):
                os.remove(path)


@pytest.fixture(scope="session")
def ray_session():
    """Started on first use, shut down at the end; every job under test reuses it. Its
    workers' temporary files (multiprocessing dirs, PyG's generated modules, downloads a
    killed worker never removed) go to a directory of the session, removed with it, as the
    CLI does for its runs (``runtime.use_scratch_tmpdir``); Ray's own logs stay in /tmp."""
    import ray

    from egecmp_ray.runtime import init_ray

    scratch = tempfile.mkdtemp(prefix="egecmp-tests-")
    before = {k: os.environ.get(k) for k in ("TMPDIR", "RAY_TMPDIR")}
    os.environ["RAY_TMPDIR"] = before["RAY_TMPDIR"] or tempfile.gettempdir()
    os.environ["TMPDIR"] = scratch  # the node processes Ray starts inherit it
    try:
        init_ray(num_cpus=2)
    finally:  # this process's own temporary files stay where pytest expects them
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield ray
    ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def dev_file() -> Path:
    if not DEV_FILE.is_file():
        pytest.skip(f"real Product1M dev file not present at {DEV_FILE}")
    return DEV_FILE


@pytest.fixture(scope="session")
def prepared(ray_session, tmp_path_factory):
    """A tiny synthetic dataset with injected bad rows, preprocessed once for the session:
    (tmp dir, config, synth manifest, preprocess manifest); outputs under ``tmp / "prep"``."""
    from egecmp_ray.config import load_config
    from egecmp_ray.data.sources import resolve_source
    from egecmp_ray.data.synth_pipeline import run_synth
    from egecmp_ray.entities.preprocess import run_preprocess

    tmp = tmp_path_factory.mktemp("prep")
    cfg = load_config(preset="tiny", overrides=["data.rows=400", "data.corrupt_fraction=0.05",
                                                "data.shard_rows=100"])
    synth = run_synth(cfg.data, str(tmp / "synth"))
    m = run_preprocess(resolve_source(str(tmp / "synth")), str(tmp / "prep"), cfg)
    return tmp, cfg, synth, m


@pytest.fixture(scope="session")
def tiny_model_dir(prepared, tmp_path_factory):
    """An untrained tiny model saved as pretrain saves one (harnesses, not quality, are tested)."""
    import torch

    from egecmp_ray.entities.tokenizer import load_tokenizer
    from egecmp_ray.model.egecmp import EGECMP, TokenIds
    from egecmp_ray.model.model_dir import save_model_dir

    tmp, cfg, _, m = prepared
    prep = tmp / "prep"
    cfg.model.region_dim = m["region_dim"]
    tokens = TokenIds.from_tokenizer(load_tokenizer(str(prep / "vocab" / "tokenizer.json")))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "model"
    save_model_dir(out, EGECMP(cfg.model, tokens).state_dict(), cfg, tokens, prep / "vocab", None)
    return out


@pytest.fixture(scope="session")
def s3():
    """A real S3 API on loopback (moto's server): yields the bucket URI ``s3://egecmp``."""
    import pyarrow.fs as pafs

    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(S3_PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", S3_PORT), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on port {S3_PORT}")
                time.sleep(0.2)
        fs, _ = pafs.FileSystem.from_uri("s3://egecmp?allow_bucket_creation=true")  # env endpoint
        fs.create_dir("egecmp")
        yield "s3://egecmp"
    finally:  # the server this fixture started, by its process, whatever happened
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()

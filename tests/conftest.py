"""One local Ray cluster for the whole test session; helpers shared by tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEV_FILE = SHARED / "data" / "product1m" / "product1m_dev_ossurl_v2.txt"


@pytest.fixture(scope="session")
def ray_session():
    """Started on first use, shut down at the end; every job under test reuses it."""
    import ray

    from egecmp_ray.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dev_file() -> Path:
    if not DEV_FILE.is_file():
        pytest.skip(f"real Product1M dev file not present at {DEV_FILE}")
    return DEV_FILE

"""The main job end to end on the embedded defaults: local Ray, synthetic data, small preset.

Local:
    python jobs/demo.py                 # work dir: a new temp dir
    python jobs/demo.py --out runs/demo --rows 2000

Cluster:
    ray job submit --working-dir . -- python jobs/demo.py --out /tmp/egecmp-demo

Stages not built yet are named in the log and the summary, never silently skipped.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("demo")

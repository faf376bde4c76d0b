"""Generate the synthetic Product1M look-alike as sharded Parquet (Ray Data).

Local (starts a Ray cluster on this machine):
    python jobs/synth.py --rows 100000 --out data/synth

One node or N nodes (the output must be storage every node reaches, e.g. s3://):
    ray job submit --working-dir . -- python jobs/synth.py --rows 1000000 --out s3://bucket/synth
    # RAY_ADDRESS=http://<head>:8265 tells `ray job submit` which cluster; the job itself
    # connects to the cluster it was submitted to.

Re-running with the same config resumes: shards already written are kept. Flags: --help.
Environment: RAY_ADDRESS (cluster to join when run directly), EGECMP_RAY_DASHBOARD=1 (local
dashboard).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("synth")

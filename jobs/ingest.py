"""Read and validate raw samples: good rows to OUT/rows, malformed rows to OUT/quarantine.

Local:
    python jobs/ingest.py --input ../shared/data/product1m/product1m_dev_ossurl_v2.txt --out runs/dev
    python jobs/ingest.py --input data/synth --out runs/synth_ingest

Cluster (input and output on shared storage):
    ray job submit --working-dir . -- python jobs/ingest.py --input s3://b/train.txt --out s3://b/ingest

A Product1M .txt file may come with --images DIR (<DIR>/<item_id>.jpg); rows without an image
are kept and flagged has_image=false. OUT/manifest.json reconciles rows_in = rows_out +
rows_quarantined. Environment: RAY_ADDRESS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("ingest")

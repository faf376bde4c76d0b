"""Embed items with a Ray Data actor pool of encoder replicas and upsert them into Milvus.

Local (Milvus Lite file, owned by one Ray actor):
    python jobs/index.py --model runs/pretrain/model --data runs/synth --collection items
    python jobs/index.py --model runs/pretrain/model --data new_items.txt --collection items  # adds

Cluster (a Milvus server; encoder replicas on every node, a GPU each when present):
    ray job submit --working-dir . -- python jobs/index.py --model /mnt/run/model \\
        --data /mnt/data/gallery --milvus-uri http://milvus:19530 --token $MILVUS_TOKEN \\
        --workers 8 index.index_type=HNSW

Re-indexing the same items replaces them (upsert by id). Environment: RAY_ADDRESS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("index")

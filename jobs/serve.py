"""Serve retrieval over HTTP (Ray Serve + Milvus): /search, /compare, /recommend, /items,
/healthz, /readyz, OpenAPI at /docs.

Local (starts Ray, a Milvus Lite file owned by one searcher replica; Ctrl-C shuts it down):
    python jobs/serve.py --model runs/pretrain/model --milvus-uri runs/evaluate/milvus.db \\
        --collection egecmp_eval
    curl -s localhost:8000/search -H 'content-type: application/json' \\
        -d '{"text": "SK-II 神仙水 230ml", "top_k": 5}'

Cluster (a Milvus server, so searchers scale out; the app stays deployed after the job ends):
    ray job submit --working-dir . -- python jobs/serve.py --model /mnt/run/model \\
        --milvus-uri http://milvus:19530 --token $MILVUS_TOKEN --host 0.0.0.0 --detach \\
        serve.max_replicas=8

The same app from a Serve config (one source of truth: it names the builder and these args):
    python jobs/serve.py --model /mnt/run/model --milvus-uri http://milvus:19530 \\
        --write-config serve_app.yaml
    serve run serve_app.yaml        # or: serve deploy serve_app.yaml (a RayService carries it)

Environment: RAY_ADDRESS (a cluster; else a local Ray), RAY_AUTH_MODE (see the README).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("serve")

"""Pretrain EGE-CMP with Ray Train + DeepSpeed ZeRO on preprocessed shards.

Local (a local Ray cluster, CPU workers, gloo + fp32):
    python jobs/pretrain.py --data runs/prep --out runs/pretrain --preset small
    python jobs/pretrain.py --data runs/prep --out runs/pretrain --workers 2 --zero-stage 2

Cluster (GPU workers pick NCCL + bf16 by themselves; DATA and OUT must be storage every node
reaches: s3:// / gs:// URIs, credentials and endpoint from AWS_* / Google env on every node, or
a shared mount such as NFS; checkpoints go to OUT/ray_results unless train.storage_path):
    ray job submit --working-dir . -- python jobs/pretrain.py --data s3://b/prep --out s3://b/run \\
        --preset paper --workers 8 --zero-stage 2 train.use_gpu=true
    # N nodes: the same command; --workers counts GPUs over all nodes.

Re-running the same command resumes from the latest checkpoint ("resumed from <checkpoint>");
a killed worker restarts the run from it (train.max_failures). Your own DeepSpeed JSON:
train.deepspeed_config=ds.json (merged over the generated one). Environment: RAY_ADDRESS,
EGECMP_NUM_CPUS (local cluster size).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("pretrain")

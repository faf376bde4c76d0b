"""Preprocess raw samples into training-ready shards, entity vocabulary and entity graph.

Local:
    python jobs/preprocess.py --input runs/synth --out runs/prep
    python jobs/preprocess.py --input ../shared/data/product1m/product1m_dev_ossurl_v2.txt --out runs/prep_dev

Cluster (one node or N: Ray Data spreads both passes over every CPU worker; the output
directory must be a path every node mounts, e.g. NFS):
    ray job submit --working-dir . -- python jobs/preprocess.py --input /mnt/data/synth --out /mnt/data/prep

Options: --tokenizer DIR (a local vocab.txt/tokenizer.json instead of training one),
--extractor pkg.module:function (another entity extractor), --images DIR for .txt inputs.
Environment: RAY_ADDRESS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("preprocess")

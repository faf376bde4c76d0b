"""Product1M evaluation: mAP/Prec/mAR @10/50/100 (+ identical-product @1/5/10).

Local:
    python jobs/evaluate.py --model runs/pretrain/model --queries runs/synth --gallery runs/synth --out runs/eval
    python jobs/evaluate.py --method tfidf --queries runs/synth --gallery runs/synth --out runs/eval_tfidf
    # dense + BM25 over title n-grams, fused in Milvus (each side alone is scored too):
    python jobs/evaluate.py --method hybrid --model runs/pretrain/model --queries runs/synth \
        --gallery runs/synth --out runs/eval_hybrid
    # the real dev file as both queries and gallery (each query itself removed), text only:
    python jobs/evaluate.py --model runs/pretrain/model \\
        --queries ../shared/data/product1m/product1m_dev_ossurl_v2.txt \\
        --gallery ../shared/data/product1m/product1m_dev_ossurl_v2.txt --out runs/eval_dev

Cluster:
    ray job submit --working-dir . -- python jobs/evaluate.py --model /mnt/run/model \\
        --queries /mnt/p1m/product1m_test_ossurl.txt --gallery /mnt/p1m/product1m_gallery_ossurl.txt \\
        --out /mnt/run/eval --milvus-uri http://milvus:19530

Writes OUT/metric_results.json and OUT/retrieval_id_list.txt. Environment: RAY_ADDRESS.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from egecmp_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("evaluate")

"""One typed configuration for every stage: presets, YAML files and dotted overrides.

Resolution order: preset defaults -> YAML file (``--config``) -> dotted overrides
(``model.hidden=256``). Every value is type-checked against the dataclass field it lands in
and range-checked by the section's ``validate``; a bad value raises :class:`ConfigError`
naming the key, so a job fails before it starts a cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

PRESETS = ("tiny", "small", "paper")
# The seven losses of DESIGN.md section 4, plus "tec": the title-entity contrast (InfoNCE
# between a title and its own entity sequence, each pooled from the text stream alone, through
# the same projection: two views of one listing, so it needs no image and teaches the
# single-stream text readout product identity; measured in results/quality_log.md: synth
# mAP@10 0.533 -> 0.662, dev dense 0.860 -> 0.885).
LOSSES = ("mlm", "mem", "mrm", "itc_text", "itc_entity", "graph_node", "graph_subgraph", "tec")
DEFAULT_LOSSES = LOSSES
GRAPH_LOSSES = ("graph_node", "graph_subgraph")


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class InputError(ValueError):
    """A path, flag or input the user can fix (the CLI exits 2 and says what is wrong)."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


STORAGE_SCHEMES = ("s3", "gs", "gcs", "file")  # object stores pyarrow (and Ray Train) reach


@dataclass
class DataConfig:
    """Synthetic generation and the sample-row limits used by validation."""

    rows: int = 10_000  # synthetic rows over all three splits
    seed: int = 0
    # Product1M's shape: tens of gallery items per instance (40,033 gallery items for the
    # test+dev labels), queries of 1-12 products. small: 200 instances of 40 brands, 2,500
    # gallery items (5-20 an instance), 400 queries, 7,100 train rows.
    num_brands: int = 40
    num_instances: int = 200  # (brand, series, category, variant) products
    query_fraction: float = 0.04  # labelled multi/single-product queries
    gallery_fraction: float = 0.25  # labelled single-product gallery items
    # Each instance's share of the gallery is drawn uniformly from this range (a count when
    # rows * gallery_fraction = num_instances * mean of the range; scaled otherwise).
    gallery_items: list[int] = field(default_factory=lambda: [5, 20])
    train_multi_fraction: float = 0.35  # unlabelled train items holding 2+ products
    query_single_fraction: float = 0.2  # queries with one product (identical-product task)
    max_products: int = 12  # products in a multi-product item (2: most likely, as in Product1M)
    products_decay: float = 0.55  # P(n products) ~ decay^(n-2) for a multi-product item
    images: bool = True  # render JPEG images (off: text-only rows, no image)
    image_size: int = 128
    jpeg_quality: int = 85
    shard_rows: int = 2_000  # rows per Parquet shard written by synth (one task each)
    corrupt_fraction: float = 0.0  # inject malformed rows (tests of quarantine)
    read_chunk_bytes: int = 8_000_000  # byte range of a .txt file one reader task takes
    # validation limits: a row beyond any of these is quarantined with a reason
    max_title_chars: int = 512
    max_image_bytes: int = 8_000_000
    max_labels: int = 64
    max_image_pixels: int = 40_000_000

    def validate(self, prefix: str = "data") -> None:
        _check(self.rows >= 1, f"{prefix}.rows", "must be >= 1")
        _check(0 <= self.seed < 2**63, f"{prefix}.seed", "must be a non-negative integer")
        _check(2 <= self.num_brands <= 5_000, f"{prefix}.num_brands", "must be in [2, 5000]")
        _check(
            self.num_brands <= self.num_instances <= 200 * self.num_brands,
            f"{prefix}.num_instances",
            f"must be in [num_brands, 200 * num_brands] = [{self.num_brands}, {200 * self.num_brands}]",
        )
        for name in ("query_fraction", "gallery_fraction", "train_multi_fraction",
                     "query_single_fraction", "corrupt_fraction"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{prefix}.{name}", f"must be in [0, 1], got {value}")
        _check(self.query_fraction + self.gallery_fraction <= 1.0, f"{prefix}.gallery_fraction",
               "query_fraction + gallery_fraction must be <= 1")
        _check(2 <= self.max_products <= 12, f"{prefix}.max_products", "must be in [2, 12]")
        _check(len(self.gallery_items) == 2 and 1 <= self.gallery_items[0] <= self.gallery_items[1],
               f"{prefix}.gallery_items", "must be [min, max] with 1 <= min <= max")
        _check(0.0 < self.products_decay <= 1.0, f"{prefix}.products_decay", "must be in (0, 1]")
        _check(32 <= self.image_size <= 1024, f"{prefix}.image_size", "must be in [32, 1024]")
        _check(1 <= self.jpeg_quality <= 100, f"{prefix}.jpeg_quality", "must be in [1, 100]")
        _check(self.shard_rows >= 1, f"{prefix}.shard_rows", "must be >= 1")
        _check(self.read_chunk_bytes >= 1, f"{prefix}.read_chunk_bytes", "must be >= 1")
        for name in ("max_title_chars", "max_image_bytes", "max_labels", "max_image_pixels"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")


@dataclass
class EntityConfig:
    """Entity extraction, vocabulary and entity graph (DESIGN.md section 2)."""

    extractor: str = "jieba"  # "jieba" or "module.path:function"
    max_entities: int = 15
    max_tokens: int = 36  # title / entity sequence length
    entity_tokens: int = 8  # tokens of one entity ([CLS] pieces [SEP]); at most max_tokens
    min_count: int = 2  # entities seen fewer times get no graph node
    pmi_min: float = 0.0  # co-occurrence edges need PMI above this
    knn_k: int = 5  # character n-gram kNN edges per entity
    knn_min_sim: float = 0.3
    # Context edges: kNN over rows of the PMI matrix (entities used with the same others,
    # e.g. a brand's Latin and Chinese names). Graph positives are chosen among them.
    context_k: int = 5
    context_min_sim: float = 0.5
    positive_sim: float = 0.85  # graph positives: cosine > this
    negative_sim: float = 0.5  # graph negatives: cosine < this
    gae_hidden: int = 128
    gae_out: int = 64
    gae_epochs: int = 50
    # Precomputed detector regions instead of the grid: <dir>/<item_id>.npz holding
    # "features" [36, D] and "boxes" [36, 5] (e.g. CAPTURE's Faster R-CNN features).
    region_features: Optional[str] = None

    def validate(self, prefix: str = "entities") -> None:
        _check(1 <= self.max_entities <= 64, f"{prefix}.max_entities", "must be in [1, 64]")
        _check(4 <= self.max_tokens <= 512, f"{prefix}.max_tokens", "must be in [4, 512]")
        _check(3 <= self.entity_tokens <= self.max_tokens, f"{prefix}.entity_tokens",
               "must be in [3, max_tokens]")
        _check(self.min_count >= 1, f"{prefix}.min_count", "must be >= 1")
        _check(self.knn_k >= 0, f"{prefix}.knn_k", "must be >= 0")
        _check(self.context_k >= 0, f"{prefix}.context_k", "must be >= 0")
        _check(-1.0 <= self.context_min_sim < 1.0, f"{prefix}.context_min_sim",
               "must be in [-1, 1)")
        _check(-1.0 <= self.negative_sim < self.positive_sim <= 1.0, f"{prefix}.positive_sim",
               "need -1 <= negative_sim < positive_sim <= 1")
        _check(self.gae_hidden >= 1 and self.gae_out >= 1, f"{prefix}.gae_out", "must be >= 1")


@dataclass
class ModelConfig:
    """Hybrid-stream model sizes (DESIGN.md section 3); presets fill these in."""

    vocab_size: int = 8_000
    hidden: int = 256
    text_layers: int = 2
    text_heads: int = 4
    text_ffn: int = 1024
    image_hidden: int = 256
    image_layers: int = 2
    image_heads: int = 4
    image_ffn: int = 512
    coattn_hidden: int = 256
    coattn_layers: int = 2
    coattn_heads: int = 4
    cross_layers: int = 2
    cross_heads: int = 4
    region_dim: int = 64  # feature size of one region (pretrain takes it from the data's manifest)
    num_regions: int = 36
    embed_dim: int = 256  # per-modality retrieval vector (item vector is 2x)
    dropout: float = 0.1
    bert_checkpoint: Optional[str] = None  # local directory only (offline)
    # Ablations (DESIGN.md section 4): "full"; "no_graph" (entity stream, no graph losses);
    # "no_entity" (CAPTURE-like: text + image only, no entity stream).
    variant: Literal["full", "no_graph", "no_entity"] = "full"
    # Retrieval vectors pool the cross-pass outputs: "cls" (the first position: the title's
    # [CLS], the image's global token) or "mean" over the tokens/regions.
    pooling: Literal["cls", "mean"] = "cls"
    # What the retrieval vector reads: "single" = the single-stream outputs (title [CLS],
    # entity-sequence [CLS], image global token) through the projection heads the image-text /
    # image-entity InfoNCE trains, as CLIP and ALBEF do; "fused" = the cross-pass readout through
    # fixed random projections no loss trains (the earlier design, kept as an ablation).
    retrieval_features: Literal["single", "fused"] = "single"
    # How a single stream is read for the contrastive losses and the single readout: "mean"
    # over its tokens/regions, or its first position ("cls"). Measured: from scratch, the
    # title/entity [CLS] vectors collapse and InfoNCE sits at ln(batch); the mean learns.
    single_pooling: Literal["cls", "mean"] = "mean"
    # single: text half = normalise(text * title + entity * entity sequence + graph * the mean
    # of the item's entities encoded alone, the vectors the graph losses train); image half
    # scaled. graph 2 measured best on the dev titles, and it is what lets the graph losses
    # show (synth: full 0.674 vs no_graph 0.651 at 200 steps; 0.602 vs 0.593 without it).
    retrieval_weights: dict[str, float] = field(
        default_factory=lambda: {"text": 1.0, "entity": 1.0, "graph": 2.0, "image": 1.0})
    losses: list[str] = field(default_factory=lambda: list(DEFAULT_LOSSES))  # switch on/off
    loss_weights: dict[str, float] = field(default_factory=dict)  # default weight 1
    mask_prob: float = 0.15  # MLM / masked entity modelling: 80% [MASK], 10% random, 10% kept
    # Also mask whole entities, each with mask_prob, in the entity sequence and in the title
    # together (else a masked brand can be copied from its unmasked twin). Not yet measured.
    entity_span_masking: bool = False
    max_entities_masked: int = 16  # entities of a sequence considered for span masking
    region_mask_prob: float = 0.15  # masked region modelling: 90% of those zeroed
    # CAPTURE's details, each measured (results/quality_log.md section 11): the MLM / masked
    # entity decoder's output layer shares the word embeddings; position and segment (title,
    # image, entity) embeddings on the concatenations the cross transformer reads; "bert"
    # initialisation (N(0, 0.02) weights, zero biases, unit LayerNorms) for every module,
    # not only the BERT layers ("torch": PyTorch's defaults outside BERT).
    tie_decoders: bool = False
    cross_embeddings: bool = False
    init: Literal["bert", "torch"] = "torch"
    temperature: float = 0.07  # InfoNCE (image-text, image-entity, graph node)
    graph_anchors: int = 32  # batch entities per step that get graph losses
    graph_margin: float = 0.2  # subgraph ranking margin

    def active_losses(self) -> list[str]:
        """The configured losses the variant allows, in a fixed order."""
        blocked = {"full": set(), "no_graph": set(GRAPH_LOSSES),
                   "no_entity": {"mem", "itc_entity", "tec", *GRAPH_LOSSES}}[self.variant]
        return [name for name in LOSSES if name in self.losses and name not in blocked]

    def validate(self, prefix: str = "model") -> None:
        for name in ("hidden", "image_hidden", "coattn_hidden"):
            heads = {"hidden": self.text_heads, "image_hidden": self.image_heads,
                     "coattn_hidden": self.coattn_heads}[name]
            _check(getattr(self, name) % heads == 0, f"{prefix}.{name}",
                   f"must be divisible by its head count ({heads})")
        _check(self.hidden % self.cross_heads == 0, f"{prefix}.cross_heads",
               f"must divide model.hidden ({self.hidden})")
        for name in ("vocab_size", "text_layers", "image_layers", "coattn_layers", "cross_layers",
                     "region_dim", "num_regions", "embed_dim"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")
        _check(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", "must be in [0, 1)")
        unknown = sorted(set(self.losses) - set(LOSSES))
        _check(not unknown, f"{prefix}.losses", f"unknown losses {unknown}; known: {list(LOSSES)}")
        unknown = sorted(set(self.loss_weights) - set(LOSSES))
        _check(not unknown, f"{prefix}.loss_weights", f"unknown losses {unknown}; known: {list(LOSSES)}")
        for name, weight in self.loss_weights.items():
            _check(weight >= 0, f"{prefix}.loss_weights.{name}", "must be >= 0")
        for name in ("mask_prob", "region_mask_prob"):
            _check(0.0 < getattr(self, name) < 1.0, f"{prefix}.{name}", "must be in (0, 1)")
        _check(self.temperature > 0, f"{prefix}.temperature", "must be > 0")
        _check(self.graph_anchors >= 1, f"{prefix}.graph_anchors", "must be >= 1")
        _check(self.graph_margin >= 0, f"{prefix}.graph_margin", "must be >= 0")
        unknown = sorted(set(self.retrieval_weights) - {"text", "entity", "graph", "image"})
        _check(not unknown, f"{prefix}.retrieval_weights", f"unknown parts {unknown}; known: "
               "text, entity, graph, image")
        _check(all(w >= 0 for w in self.retrieval_weights.values()),
               f"{prefix}.retrieval_weights", "must be >= 0")


@dataclass
class TrainConfig:
    """Ray Train + DeepSpeed pretraining."""

    workers: int = 1
    use_gpu: Optional[bool] = None  # None: use a GPU when one is there
    cpus_per_worker: float = 1.0  # leave CPUs free for Ray Data's readers
    threads_per_worker: int = 0  # torch threads on CPU workers (0: cpus_per_worker, at least 1)
    # The train workers' nice value. Ray starts every worker at 15, so the raylet, GCS, dashboard
    # and driver (at 0) preempt the step's OpenMP threads whenever they wake, and the other
    # thread then waits at the next barrier; the training step is the job's critical path
    # (CPU, 1 worker on 2 cores: 0-15% faster steps at 0 in six alternating pairs, 2 workers
    # no slower). 15 restores Ray's default; Ray Data's readers keep it either way.
    worker_niceness: int = 0
    zero_stage: int = 1
    micro_batch: int = 16
    grad_accum: int = 1
    epochs: int = 2
    max_steps: int = 0  # 0: run all epochs
    lr: float = 5e-4  # measured on `small` (results/quality_log.md); `paper` sets 1e-4
    bert_lr_scale: float = 0.1  # lr multiplier for weights loaded from a BERT checkpoint
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # The model's forward through torch.compile (inductor; its backward follows, the losses stay
    # eager): on a GPU ~1.1-1.4x the samples/s of eager (results/bench_model_gpu*.md) for a
    # minute or two of compilation at the first step; on CPU compilation costs more than it saves.
    compile: bool = False
    graph_refresh_epochs: int = 1
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 2
    log_every_steps: int = 10
    deepspeed_config: Optional[str] = None  # a user's JSON that overrides the generated one
    storage_path: Optional[str] = None  # shared path or s3:// / gs:// URI [default: <out>/ray_results]
    splits: list[str] = field(default_factory=lambda: ["train"])  # shard splits to train on
    # "global": Ray Data shuffles all training rows again every epoch (an all-to-all through the
    # object store, seeded by data.seed and the epoch's execution), then the local buffer;
    # "local": only a 4-batch buffer over the shards in file order (cheaper, but listings of
    # one product that sit together in a file land in one batch as InfoNCE negatives: on the
    # Product1M dev file 87% of batch rows had a same-product partner, 31% after a global shuffle).
    shuffle: Literal["global", "local"] = "global"
    fail_at_step: int = 0  # fault injection (tests): kill one worker once at this step

    def validate(self, prefix: str = "train") -> None:
        _check(self.workers >= 1, f"{prefix}.workers", "must be >= 1")
        _check(self.cpus_per_worker > 0, f"{prefix}.cpus_per_worker", "must be > 0")
        _check(self.threads_per_worker >= 0, f"{prefix}.threads_per_worker", "must be >= 0")
        _check(0 <= self.worker_niceness <= 19, f"{prefix}.worker_niceness",
               "must be 0-19 (below 0 needs privileges and would outrank the raylet)")
        _check(self.zero_stage in (0, 1, 2, 3), f"{prefix}.zero_stage", "must be 0, 1, 2 or 3")
        for name in ("micro_batch", "grad_accum", "epochs", "keep_checkpoints",
                     "log_every_steps", "checkpoint_every_steps", "graph_refresh_epochs"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")
        _check(self.max_steps >= 0, f"{prefix}.max_steps", "must be >= 0")
        _check(self.fail_at_step >= 0, f"{prefix}.fail_at_step", "must be >= 0 (0: off)")
        _check(bool(self.splits), f"{prefix}.splits", "must name at least one split")
        _check(not self.storage_path or self.storage_path.split("://")[0] in STORAGE_SCHEMES
               or "://" not in self.storage_path, f"{prefix}.storage_path",
               f"must be a path every node sees (e.g. an NFS mount) or a URI of "
               f"{list(STORAGE_SCHEMES)}")
        _check(self.max_failures >= -1, f"{prefix}.max_failures", "must be >= -1 (-1: unlimited)")
        _check(0.0 < self.lr < 1.0, f"{prefix}.lr", "must be in (0, 1)")
        _check(0.0 < self.bert_lr_scale <= 1.0, f"{prefix}.bert_lr_scale", "must be in (0, 1]")
        _check(0.0 <= self.warmup_fraction < 1.0, f"{prefix}.warmup_fraction", "must be in [0, 1)")
        _check(self.weight_decay >= 0.0, f"{prefix}.weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0.0, f"{prefix}.grad_clip", "must be >= 0 (0: off)")


@dataclass
class IndexConfig:
    """Milvus collection and index parameters."""

    milvus_uri: str = "egecmp_milvus.db"  # a Milvus Lite file, or http://host:19530
    token: Optional[str] = None
    collection: str = "egecmp_items"
    index_type: Literal["FLAT", "IVF_FLAT", "HNSW"] = "FLAT"
    metric: Literal["IP", "COSINE", "L2"] = "IP"
    nlist: int = 128  # IVF_FLAT
    nprobe: int = 16
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef: int = 128
    embed_workers: int = 1
    embed_batch: int = 256
    insert_batch: int = 2_000
    search_batch: int = 200
    top_k: int = 100
    # Hybrid retrieval: BM25 over title n-grams (Milvus' BM25 function) fused with the dense
    # vector. rrf (rank fusion) and weighted (raw scores squashed by a fixed function) run in
    # Milvus' hybrid_search; zscore and minmax search each side for hybrid_candidates hits and
    # fuse in the client, each side's scores normalised within the query's candidates
    # (retrieval/fusion.py: measured better than both Milvus rankers, quality_log section 9).
    lexical_max_ngram: int = 2
    lexical_tokenizer: str = "standard"  # a whitespace-splitting analyzer ("whitespace" on a server)
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    hybrid_ranker: Literal["rrf", "weighted", "zscore", "minmax"] = "minmax"
    rrf_k: int = 60
    hybrid_weights: list[float] = field(default_factory=lambda: [0.3, 0.7])  # dense, lexical
    hybrid_candidates: int = 200  # hits each side contributes before fusion

    def validate(self, prefix: str = "index") -> None:
        _check(bool(self.milvus_uri), f"{prefix}.milvus_uri", "must not be empty")
        _check(self.collection.replace("_", "").isalnum() and not self.collection[0].isdigit(),
               f"{prefix}.collection", "must be letters, digits and '_' and not start with a digit")
        for name in ("nlist", "nprobe", "hnsw_m", "hnsw_ef_construction", "hnsw_ef",
                     "embed_workers", "embed_batch", "insert_batch", "search_batch"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")
        _check(1 <= self.top_k <= 16_384, f"{prefix}.top_k", "must be in [1, 16384]")
        _check(1 <= self.lexical_max_ngram <= 4, f"{prefix}.lexical_max_ngram", "must be in [1, 4]")
        _check(self.lexical_tokenizer in ("standard", "whitespace", "jieba"),
               f"{prefix}.lexical_tokenizer", "must be standard, whitespace or jieba")
        _check(self.bm25_k1 > 0, f"{prefix}.bm25_k1", "must be > 0")
        _check(0 <= self.bm25_b <= 1, f"{prefix}.bm25_b", "must be in [0, 1]")
        _check(self.rrf_k >= 1, f"{prefix}.rrf_k", "must be >= 1")
        _check(len(self.hybrid_weights) == 2 and all(0 <= w <= 1 for w in self.hybrid_weights),
               f"{prefix}.hybrid_weights", "must be two weights in [0, 1]: dense, lexical")
        _check(1 <= self.hybrid_candidates <= 16_384, f"{prefix}.hybrid_candidates",
               "must be in [1, 16384]")


@dataclass
class ServeConfig:
    """Ray Serve application: a FastAPI ingress, autoscaling encoder replicas (dynamic batching)
    and the searcher that holds the Milvus connection (it batches searches too)."""

    host: str = "127.0.0.1"  # loopback unless a deployment needs to be reached from outside
    port: int = 8000
    min_replicas: int = 1  # encoder replicas (autoscaled between min and max)
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64  # per replica; at least max_batch_size or batches never fill
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    max_batch_size: int = 32  # encoder @serve.batch (1: batching off)
    batch_wait_timeout_s: float = 0.01
    search_batch_size: int = 64  # searcher @serve.batch: many requests, one Milvus search call
    search_wait_timeout_s: float = 0.005
    searcher_max_replicas: int = 2  # a Milvus server URI only; a Lite file has exactly one owner
    cpus_per_replica: float = 1.0
    use_gpu: Optional[bool] = None  # None: a GPU per encoder replica when the cluster has them
    ingress_replicas: int = 1
    access_log: bool = True  # a log line per request and per back-end call, in every replica
    max_body_bytes: int = 12_000_000  # 413 above (a base64 image is 4/3 of its bytes)
    max_upsert_items: int = 64  # POST /items
    compare_min_score: float = 0.5  # POST /compare: hits below this are not "the same product"
    compare_candidates: int = 100
    recommend_min_score: float = 0.3  # POST /recommend: an entity span must retrieve this well

    def validate(self, prefix: str = "serve") -> None:
        _check(1 <= self.port <= 65_535, f"{prefix}.port", "must be in [1, 65535]")
        _check(bool(self.host.strip()), f"{prefix}.host", "must not be empty")
        _check(0 <= self.min_replicas <= self.max_replicas, f"{prefix}.min_replicas",
               "need 0 <= min_replicas <= max_replicas")
        _check(self.max_replicas >= 1, f"{prefix}.max_replicas", "must be >= 1")
        _check(self.max_batch_size >= 1, f"{prefix}.max_batch_size", "must be >= 1")
        _check(self.max_ongoing_requests >= self.max_batch_size, f"{prefix}.max_ongoing_requests",
               f"must be >= max_batch_size ({self.max_batch_size}) or batches never fill")
        _check(self.search_batch_size >= 1, f"{prefix}.search_batch_size", "must be >= 1")
        _check(self.batch_wait_timeout_s >= 0 and self.search_wait_timeout_s >= 0,
               f"{prefix}.batch_wait_timeout_s", "wait timeouts must be >= 0")
        _check(self.target_ongoing_requests > 0, f"{prefix}.target_ongoing_requests", "must be > 0")
        _check(self.upscale_delay_s >= 0 and self.downscale_delay_s >= 0,
               f"{prefix}.upscale_delay_s", "scaling delays must be >= 0")
        _check(self.searcher_max_replicas >= 1, f"{prefix}.searcher_max_replicas", "must be >= 1")
        _check(self.ingress_replicas >= 1, f"{prefix}.ingress_replicas", "must be >= 1")
        _check(self.cpus_per_replica > 0, f"{prefix}.cpus_per_replica", "must be > 0")
        _check(self.max_body_bytes >= 1_024, f"{prefix}.max_body_bytes", "must be >= 1024")
        _check(1 <= self.max_upsert_items <= 10_000, f"{prefix}.max_upsert_items",
               "must be in [1, 10000]")
        _check(1 <= self.compare_candidates <= 1_000, f"{prefix}.compare_candidates",
               "must be in [1, 1000]")
        for name in ("compare_min_score", "recommend_min_score"):
            _check(-2.0 <= getattr(self, name) <= 2.0, f"{prefix}.{name}",
                   "must be in [-2, 2] (item vectors are two unit halves)")


@dataclass
class ClusterConfig:
    """Where work lands on a cluster with worker groups (``cluster.yaml``, ``deploy/``): each
    group's nodes advertise a custom resource and the work meant for the group asks for one
    unit of it, so the autoscaler grows the right group. Empty names: anywhere (local runs)."""

    cpu_resource: str = ""  # Ray Data tasks (ingest, preprocess, embedding) and index embedders
    gpu_resource: str = ""  # train workers and the serving encoder replicas

    def validate(self, prefix: str = "cluster") -> None:
        for name in ("cpu_resource", "gpu_resource"):
            value = getattr(self, name)
            _check(value == value.strip() and value not in ("CPU", "GPU", "memory"),
                   f"{prefix}.{name}", "must be a custom resource name (not CPU/GPU/memory), "
                   "without spaces")


@dataclass
class Config:
    """The whole configuration; ``preset`` names the defaults it started from."""

    preset: str = "small"
    data: DataConfig = field(default_factory=DataConfig)
    entities: EntityConfig = field(default_factory=EntityConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> "Config":
        _check(self.preset in PRESETS, "preset", f"must be one of {list(PRESETS)}")
        for section in ("data", "entities", "model", "train", "index", "serve", "cluster"):
            getattr(self, section).validate(section)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, *sections: str) -> str:
        """Stable short hash of the named sections (all when none), for manifests and resume."""
        full = self.to_dict()
        chosen = {s: full[s] for s in sections} if sections else full
        blob = json.dumps(chosen, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Preset values over the dataclass defaults. `small` is the defaults themselves (the CPU demo).
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "tiny": {
        "data": {"rows": 600, "num_brands": 12, "num_instances": 60, "image_size": 64,
                 "shard_rows": 200},
        "entities": {"gae_epochs": 5, "gae_hidden": 32, "gae_out": 16},
        "model": {"vocab_size": 2_000, "hidden": 64, "text_layers": 1, "text_heads": 2,
                  "text_ffn": 128, "image_hidden": 64, "image_layers": 1, "image_heads": 2,
                  "image_ffn": 128, "coattn_hidden": 64, "coattn_layers": 1, "coattn_heads": 2,
                  "cross_layers": 1, "cross_heads": 2, "embed_dim": 64},
        "train": {"micro_batch": 8, "epochs": 1, "checkpoint_every_steps": 5, "log_every_steps": 2},
        "index": {"embed_batch": 64},
    },
    "small": {},
    "paper": {
        "data": {"image_size": 256},
        "entities": {"gae_hidden": 128, "gae_out": 64},
        "model": {"vocab_size": 21_128, "hidden": 768, "text_layers": 4, "text_heads": 12,
                  "text_ffn": 3072, "image_hidden": 768, "image_layers": 4, "image_heads": 8,
                  "image_ffn": 1024, "coattn_hidden": 512, "coattn_layers": 4,
                  "coattn_heads": 8, "cross_layers": 6, "cross_heads": 8, "region_dim": 2048,
                  "embed_dim": 512, "dropout": 0.1},
        "train": {"micro_batch": 64, "epochs": 5, "lr": 1e-4},
    },
}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints widen to floats), or raise."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        _check(optional, key, "must not be null")
        return None
    origin = typing.get_origin(inner)
    if origin is Literal:
        allowed = typing.get_args(inner)
        _check(value in allowed, key, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is dict:
        _check(isinstance(value, dict), key, f"must be a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(inner)
        return {_coerce(f"{key}", key_tp, k): _coerce(f"{key}.{k}", val_tp, v)
                for k, v in value.items()}
    if origin is list:
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {value!r}")
        (item_tp,) = typing.get_args(inner)
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if inner is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if inner is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key,
               f"must be an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        return float(value)
    if inner is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported field type {inner!r}")  # pragma: no cover


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set nested ``values`` on the dataclass ``obj``, type-checking each leaf."""
    _check(isinstance(values, dict), prefix.rstrip(".") or "<root>", "must be a mapping")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(key, f"unknown key; known keys here: {sorted(names)}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, key + ".")
        elif isinstance(current, dict) and isinstance(value, dict):  # merge: a.b.c=1 keeps a.b.d
            setattr(obj, name, {**current, **_coerce(key, hints[name], value)})
        else:
            setattr(obj, name, _coerce(key, hints[name], value))


def parse_override(text: str) -> tuple[str, Any]:
    """``'model.hidden=256'`` -> ``('model.hidden', 256)``; values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    _check(bool(key), text, "an override needs a key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot parse value {raw!r}: {exc}") from None
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: typing.Sequence[str] = (),
    preset: Optional[str] = None,
) -> Config:
    """Build a validated :class:`Config` from a preset, an optional YAML file and overrides.

    The preset comes from ``preset`` if given, else the file's or an override's ``preset``
    key, else ``small``.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--config", f"file not found: {p}")
        try:
            file_values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{p} is not valid YAML: {exc}") from None
        _check(isinstance(file_values, dict), "--config", f"{p} must hold a mapping at top level")
    parsed = [parse_override(o) for o in overrides]
    from_overrides = [value for key, value in parsed if key == "preset"]
    chosen = preset or (from_overrides[-1] if from_overrides else None) \
        or file_values.get("preset") or "small"
    _check(chosen in PRESETS, "preset", f"must be one of {list(PRESETS)}, got {chosen!r}")

    cfg = Config(preset=chosen)
    _apply(cfg, {k: v for k, v in _PRESET_VALUES[chosen].items()})
    _apply(cfg, {k: v for k, v in file_values.items() if k != "preset"})
    for key, value in parsed:
        if key != "preset":
            _apply(cfg, _nest(key, value))
    return cfg.validate()


def apply_values(cfg: Config, values: dict[str, Any]) -> Config:
    """Set nested ``values`` (e.g. from command-line flags) on ``cfg``, type-checked, validated."""
    _apply(cfg, values)
    return cfg.validate()


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. from a manifest or checkpoint)."""
    values = dict(values)
    cfg = Config(preset=values.pop("preset", "small"))
    _apply(cfg, values)
    return cfg.validate()

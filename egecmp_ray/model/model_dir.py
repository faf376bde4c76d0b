"""The model directory: what ``pretrain`` writes as ``OUT/model/`` and what indexing, evaluation
and serving load. It lives beside the model, not in the training harness, so ``train/`` writes it
and ``retrieval/`` and ``serve/`` read it as siblings (open_clip keeps ``load_checkpoint`` in the
library too). The format is unchanged since the first release: older directories load as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from egecmp_ray.config import DEFAULT_LOSSES, LOSSES, Config, InputError, config_from_dict
from egecmp_ray.data import storage
from egecmp_ray.model.egecmp import EGECMP, TokenIds

MODEL_FILE = "model.safetensors"
MODEL_CONFIG = "model_config.json"
VOCAB_DIR = "vocab"


def save_model_dir(out: Path, state_dict: dict[str, torch.Tensor], cfg: Config, tokens: TokenIds,
                   vocab_dir: Path, graph_sets: Optional[dict[str, torch.Tensor]]) -> None:
    """Everything inference needs: fp32 safetensors, model + entity config, token ids,
    tokenizer and entity vocabulary, and the last entity graph sets."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for k, v in state_dict.items():  # tied weights (model.tie_decoders) are stored twice:
        v = v.detach().float().contiguous().cpu()  # safetensors refuses shared memory
        tensors[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    save_file(tensors, str(out / MODEL_FILE))
    meta = {"model": cfg.to_dict()["model"], "entities": cfg.to_dict()["entities"],
            "tokens": vars(tokens), "preset": cfg.preset}
    (out / MODEL_CONFIG).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / VOCAB_DIR).mkdir(exist_ok=True)
    for name in ("tokenizer.json", "entities.tsv", "vocab.txt"):
        if (vocab_dir / name).is_file():
            shutil.copy2(vocab_dir / name, out / VOCAB_DIR / name)
    if graph_sets is not None:
        torch.save(graph_sets, out / "graph_sets.pt")


def load_model_dir(path: str) -> tuple[EGECMP, Config]:
    """The model (eval mode, fp32) and the config it was trained with, from ``save_model_dir``."""
    from safetensors.torch import load_file

    root = storage.local_input(path)  # an object-store model dir: fetched once a process
    if not (root / MODEL_CONFIG).is_file() or not (root / MODEL_FILE).is_file():
        raise InputError(f"model dir {root}: needs {MODEL_CONFIG} and {MODEL_FILE} "
                         "(written by `egecmp pretrain` as OUT/model/)")
    meta = json.loads((root / MODEL_CONFIG).read_text(encoding="utf-8"))
    model_cfg = dict(meta["model"], bert_checkpoint=None)  # the weights below replace it
    # Losses since retired (inference does not run them) must not stop older model dirs loading.
    model_cfg["losses"] = [x for x in model_cfg.get("losses", DEFAULT_LOSSES) if x in LOSSES]
    # A dir from before the single-stream readout was indexed with the fused vectors: keep
    # reading those, or its existing Milvus collections would no longer match its queries.
    model_cfg.setdefault("retrieval_features", "fused")
    model_cfg.setdefault("single_pooling", "cls")
    model_cfg.setdefault("tie_decoders", False)  # dirs from before these options had neither
    model_cfg.setdefault("cross_embeddings", False)
    cfg = config_from_dict({"preset": meta["preset"], "model": model_cfg,
                            "entities": meta["entities"]})
    model = EGECMP(cfg.model, TokenIds(**meta["tokens"]))
    missing, unexpected = model.load_state_dict(load_file(str(root / MODEL_FILE)), strict=False)
    if missing or unexpected:
        raise InputError(f"model dir {root}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval(), cfg



def item_dim(path: str) -> int:
    """The item-vector size of a model directory, read without building the model (fails
    early, naming what is missing, if it is not one)."""
    config = storage.local_input(path) / MODEL_CONFIG
    if not config.is_file():
        load_model_dir(path)  # raises the InputError that names what is missing
    return 2 * json.loads(config.read_text(encoding="utf-8"))["model"]["embed_dim"]

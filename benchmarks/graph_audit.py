"""Audit the entity graph's positive sets against the synthetic catalogue's ground truth: what
share of (entity, graph-positive) pairs are aliases of one product part (two spellings of a
brand, of a series, synonyms of a category) and what share are merely the same brand, or
nothing. Brand-level or unrelated positives teach the graph losses the wrong thing.

    python benchmarks/graph_audit.py --prep PREP_DIR --synth SYNTH_DIR [--sets FILE]
``--sets``: a ``graph_sets.pt`` of a model dir / checkpoint (the sets the trainer refreshed);
default ``PREP_DIR/graph/sets.pt`` (preprocess's). Prints the shares and examples and appends
them to results/quality_log.md. "unknown entity": a fragment the audit cannot map to the
catalogue (single characters the segmenter cut off, marketing leftovers).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import torch

from egecmp_ray.data.catalog import CATEGORIES, VARIANTS, build_catalog
from egecmp_ray.data.clean import clean_title
from egecmp_ray.entities.encode import read_vocab

ROOT = Path(__file__).resolve().parents[1]


def _pieces(text: str) -> list[str]:
    """The entity strings a surface form can become: itself cleaned and lower-cased, and its
    parts (cleaning turns ``Ra-Anmi`` into ``ra anmi``, which the extractor splits)."""
    cleaned = clean_title(text).lower()
    return [cleaned.replace(" ", "")] + re.split(r"\s+", cleaned)


def truth(seed: int, num_brands: int, num_instances: int) -> dict[str, set[tuple[str, int]]]:
    """entity string -> {("brand", b), ("series", s), ("category", c)} it can stand for."""
    cat = build_catalog(seed, num_brands, num_instances)
    out: dict[str, set[tuple[str, int]]] = {}

    def add(text: str, key: tuple[str, int]) -> None:
        for p in _pieces(text):
            if p:
                out.setdefault(p, set()).add(key)

    for b, brand in enumerate(cat.brands):
        for alias in brand.aliases:
            add(alias, ("brand", b))
    series_brand: dict[str, set[int]] = {}
    for inst in cat.instances:
        series_brand.setdefault(inst.series.name, set()).add(inst.brand)
    series_id = {name: i for i, name in enumerate(sorted(series_brand))}
    for inst in cat.instances:
        sid = series_id[inst.series.name]
        for spelling in inst.series.spellings:
            add(spelling, ("series", sid))
        out.setdefault(f"_series_brands_{sid}", set()).update(("brand", b) for b in
                                                              series_brand[inst.series.name])
    for c, (_, synonyms, _) in enumerate(CATEGORIES):
        for s in synonyms:
            add(s, ("category", c))
    for v, variant in enumerate(VARIANTS):
        if variant:
            add(variant, ("variant", v))
    return out


def facts_of(entity: str, facts: dict[str, set[tuple[str, int]]]) -> set[tuple[str, int]]:
    """What an entity string stands for; a fragment the segmenter cut out of a known form
    (``妆前`` of ``妆前乳``) stands for what the forms containing it stand for."""
    if entity in facts:
        return facts[entity]
    if len(entity) < 2:
        return set()
    found: set[tuple[str, int]] = set()
    for key, f in facts.items():
        if not key.startswith("_") and entity in key:
            found |= f
    return found


def classify(a: str, b: str, facts: dict[str, set[tuple[str, int]]]) -> str:
    fa, fb = facts_of(a, facts), facts_of(b, facts)
    if not fa or not fb:
        return "unknown entity"
    if fa & fb:
        return "alias (same " + sorted(fa & fb)[0][0] + ")"

    def brands(f: set[tuple[str, int]]) -> set[int]:
        out = {i for k, i in f if k == "brand"}
        for k, i in f:
            if k == "series":
                out |= {j for _, j in facts.get(f"_series_brands_{i}", set())}
        return out

    if brands(fa) & brands(fb):
        return "same brand, other part"
    return "unrelated"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prep", required=True)
    ap.add_argument("--synth", required=True)
    ap.add_argument("--sets", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args()
    cfg = json.loads((Path(args.synth) / "manifest.json").read_text())["config"]
    facts = truth(cfg["seed"], cfg["num_brands"], cfg["num_instances"])
    names = [e for e, _ in read_vocab(Path(args.prep) / "vocab" / "entities.tsv")]
    sets = torch.load(args.sets or Path(args.prep) / "graph" / "sets.pt", weights_only=True)
    kinds: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for i, row in enumerate(sets["positives"].tolist()):
        for j in row:
            if j >= 0:
                k = classify(names[i], names[j], facts)
                kinds[k] += 1
                examples.setdefault(k, []).append(f"{names[i]}~{names[j]}")
    total = sum(kinds.values())
    known = total - kinds["unknown entity"]
    anchors = int((sets["positives"] >= 0).any(1).sum())
    lines = [f"\n### graph audit: {args.label or args.sets or 'preprocess sets'} "
             f"({len(names)} entities, {anchors} with a positive, {total} positive pairs)\n",
             "| kind | share | share of the classified | examples |", "|---|---|---|---|"]
    for k, n in kinds.most_common():
        of_known = f"{n / known:.3f}" if k != "unknown entity" and known else ""
        lines.append(f"| {k} | {n / total:.3f} | {of_known} | {', '.join(examples[k][:6])} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(Path(args.out) / "quality_log.md", "a", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    from egecmp_ray.runtime import use_scratch_tmpdir

    use_scratch_tmpdir()  # no temporary file of its own or its workers outlives it
    main()

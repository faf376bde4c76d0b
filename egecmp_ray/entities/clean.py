"""Text helpers of the entity stage (title cleaning itself is ``data/clean.py``: validation,
left of this layer, needs it too)."""

from __future__ import annotations


def has_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)

"""Title cleaning: the CAPTURE/EGE punctuation set to spaces, whitespace collapsed.

It lives in ``data/`` because validation quarantines titles that clean to nothing; the entity
stage (``entities/clean.py``) and everything downstream call the same function.
"""

from __future__ import annotations

import re
import string
import unicodedata

# ASCII punctuation plus the full-width marks of the original preprocessing (DESIGN.md section 2).
PUNCTUATION = string.punctuation + "《》？！“”‘’@#￥%…&×（）——【】；●，。～、|："
_PUNCT_RE = re.compile("[" + re.escape(PUNCTUATION) + "]")
_SPACE_RE = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """``'【正品】SK-II 神仙水，230ml'`` -> ``'正品 SK II 神仙水 230ml'``. Full-width forms are
    folded first (NFKC: ``５０ｍｌ`` -> ``50ml``); zero-width and control characters go."""
    text = unicodedata.normalize("NFKC", title)
    text = "".join(" " if unicodedata.category(c) in ("Cf", "Cc") else c for c in text)
    return _SPACE_RE.sub(" ", _PUNCT_RE.sub(" ", text)).strip()

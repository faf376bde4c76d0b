"""Title cleaning: the CAPTURE/EGE punctuation set to spaces, whitespace collapsed."""

from __future__ import annotations

import re
import string

# ASCII punctuation plus the full-width marks of the original preprocessing (DESIGN.md section 2).
PUNCTUATION = string.punctuation + "《》？！“”‘’@#￥%…&×（）——【】；●，。～、|："
_PUNCT_RE = re.compile("[" + re.escape(PUNCTUATION) + "]")
_SPACE_RE = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """``'【正品】SK-II 神仙水，230ml'`` -> ``'正品 SK II 神仙水 230ml'``."""
    return _SPACE_RE.sub(" ", _PUNCT_RE.sub(" ", title)).strip()

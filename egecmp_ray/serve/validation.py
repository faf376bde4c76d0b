"""Request checks that depend on the deployed config and index, and Milvus filter expressions
built from validated values only.

Items posted to ``/items`` go through data validation's own ``row_problem`` (the rules ``index``
applies to files), so the API cannot admit a row the batch path would quarantine. Filter
expressions never contain a user string that is not on the allow-list of indexed categories,
and numbers are formatted from finite floats (Milvus Lite 3.2 has no filter templates).
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Optional

from egecmp_ray.data.clean import clean_title
from egecmp_ray.data.validate import Limits, image_problem, row_problem
from egecmp_ray.retrieval.milvus_store import escape
from egecmp_ray.serve.schemas import Filter, Item

MIN_IMAGE_SIDE = 8
MAX_ASPECT = 50  # a 1 x 10,000 "image" is not a product photo


class RequestError(ValueError):
    """A request the service refuses: ``status`` (4xx), the field and why."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


def check_text(text: Optional[str], limits: Limits, field: str = "text") -> None:
    """Within the title limit and with a word left once cleaned (as ``/items`` requires):
    '【】！！' would be encoded as an empty title and match whatever lies nearest to that."""
    if text is None:
        return
    if len(text) > limits.max_title_chars:
        raise RequestError(field, f"{len(text)} characters > the limit of {limits.max_title_chars}")
    if not clean_title(text):
        raise RequestError(field, "empty_after_cleaning: only punctuation and spaces, no word "
                                  "to search for")


def check_image(data: Optional[bytes], limits: Limits, field: str = "image") -> None:
    """Byte and pixel limits, a full decode, and sane dimensions."""
    if data is None:
        return
    problem = image_problem(data, limits)
    if problem is None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        if min(w, h) < MIN_IMAGE_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
            problem = f"absurd_dimensions: {w}x{h}"
    if problem is not None:
        kind, _, why = problem.partition(": ")
        raise RequestError(field, f"{kind}: {why}" if why else kind,
                           413 if kind == "image_too_large" else 422)


def item_row(item: Item, image: Optional[bytes]) -> dict[str, Any]:
    """A posted item as a sample row (the schema ``index`` validates and embeds)."""
    labels = [item.label] if item.label else []
    return {"item_id": item.id, "title": item.title, "image": image, "has_image": image is not None,
            "labels": labels, "price": item.price, "category": item.category or "",
            "split": "gallery" if labels else "train", "source": "api"}


def check_items(items: Iterable[Item], images: list[Optional[bytes]], limits: Limits) -> None:
    seen: set[str] = set()
    for i, (item, image) in enumerate(zip(items, images)):
        if item.id in seen:
            raise RequestError(f"items[{i}].id", f"duplicate id {item.id!r} in one request")
        seen.add(item.id)
        problem = row_problem(item_row(item, image), limits)
        if problem is not None:
            raise RequestError(f"items[{i}]", problem)


def filter_expression(f: Optional[Filter], known_categories: set[str]) -> str:
    """The Milvus boolean expression of a validated filter ('' for none)."""
    if f is None:
        return ""
    parts = []
    if f.category is not None:
        if f.category not in known_categories:
            shown = ", ".join(sorted(known_categories)[:20])
            raise RequestError("filter.category",
                               f"unknown category {f.category[:80]!r}; known: {shown}"
                               + (" ..." if len(known_categories) > 20 else ""))
        parts.append(f'category == "{escape(f.category)}"')
    if f.price_min is not None or f.price_max is not None:
        # An unknown price is stored as -1: a price filter keeps known prices only.
        parts.append(f"price >= {f.price_min or 0.0:.6f}")
    if f.price_max is not None:
        parts.append(f"price <= {f.price_max:.6f}")
    return " and ".join(parts)

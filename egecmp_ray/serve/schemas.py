"""The HTTP API's request and response bodies (pydantic, ``extra="forbid"``).

Structure is checked here: types (``top_k`` a strict integer in 1..100), unknown fields, finite
prices, well-formed base64. What depends on the deployed config and data (title and image
limits, decoding the image, known categories) is checked by :mod:`egecmp_ray.serve.validation`,
with the same error shape, before anything reaches the model or the index.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal, Optional

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr,
                      field_validator, model_validator)

MAX_TOP_K = 100
MAX_ID_CHARS = 64  # as data validation's item id limit
MAX_PRICE = 1e12
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def decode_base64(value: Optional[str]) -> Optional[bytes]:
    """Strict base64 (an optional ``data:image/...;base64,`` prefix is allowed)."""
    if value is None:
        return None
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def _nonempty_base64(value: str) -> str:
    if not decode_base64(value):
        raise ValueError("decodes to no bytes")
    return value


Base64Image = Annotated[StrictStr, AfterValidator(_nonempty_base64),
                        Field(description="Base64 JPEG/PNG bytes.")]


class _Query(_Body):
    """A text and/or image query (at least one)."""

    text: Optional[StrictStr] = Field(None, description="Product title or search words.")
    image: Optional[Base64Image] = None

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("must not be empty or whitespace only")
        return v



class Filter(_Body):
    """Structured filter on the indexed fields; values only, never an expression."""

    category: Optional[StrictStr] = None
    price_min: Optional[FiniteFloat] = Field(None, ge=0, le=MAX_PRICE)
    price_max: Optional[FiniteFloat] = Field(None, ge=0, le=MAX_PRICE)

    @model_validator(mode="after")
    def _range(self) -> "Filter":
        if self.price_min is not None and self.price_max is not None \
                and self.price_min > self.price_max:
            raise ValueError("price_min must be <= price_max")
        return self


TopK = Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K, description="Results to return (1-100).")]


class _RequiredQuery(_Query):
    """A query that must hold text, an image or both."""

    @model_validator(mode="after")
    def _some_query(self) -> "_RequiredQuery":
        if self.text is None and self.image is None:
            raise ValueError("give text, image or both")
        return self


class SearchRequest(_RequiredQuery):
    top_k: TopK = 10
    filter: Optional[Filter] = None
    mode: Literal["dense", "hybrid"] = "dense"


class CompareRequest(_Query):
    """Price comparison: an indexed item id, or a text/image query (exactly one of the two)."""

    id: Optional[Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]] = None
    top_k: TopK = 10
    min_score: Optional[Annotated[FiniteFloat, Field(ge=-2, le=2)]] = None

    @model_validator(mode="after")
    def _one_of(self) -> "CompareRequest":
        has_query = self.text is not None or self.image is not None
        if (self.id is None) == (not has_query):
            raise ValueError("give either id or a text/image query, not both or neither")
        return self


class RecommendRequest(_RequiredQuery):
    """A multi-product query (a bundle's title and/or image) -> its single products."""

    top_k: TopK = 5  # per detected instance


class Item(_Body):
    id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]
    title: StrictStr
    image: Optional[Base64Image] = None
    price: Optional[Annotated[FiniteFloat, Field(ge=0, le=MAX_PRICE)]] = None
    category: Optional[Annotated[StrictStr, Field(max_length=256)]] = None
    label: Optional[Annotated[StrictStr, Field(max_length=512)]] = None


class UpsertRequest(_Body):
    items: list[Item] = Field(..., min_length=1)


class Hit(BaseModel):
    id: str
    score: float
    title: str
    price: Optional[float]
    category: str
    label: Optional[str]


class SearchResponse(BaseModel):
    hits: list[Hit]
    mode: str
    took_ms: float


class CompareResponse(BaseModel):
    query_id: Optional[str]
    min_score: float
    offers: list[Hit]  # the same product from other sellers, cheapest first
    took_ms: float


class Instance(BaseModel):
    span: str  # the entities of the query that name this product
    hits: list[Hit]


class RecommendResponse(BaseModel):
    instances: list[Instance]
    took_ms: float


class UpsertResponse(BaseModel):
    upserted: int
    total: int


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    error: str
    detail: list[ErrorDetail]

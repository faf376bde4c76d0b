"""Render listing images: each product's visual signature pasted over clutter.

A signature is (shape, pattern, brand colour, accent colour, glyph). Products are drawn at a
random position, scale and rotation, so region features have to find them; a multi-product
listing holds several. Output is JPEG bytes, as real listings are.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from egecmp_ray.data.catalog import PALETTE, PATTERNS, SHAPES, Instance

_TILE = 96  # signatures are drawn once at this size, then scaled per image


def _shape_mask(shape: str, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    s, m = size, size // 12
    if shape == "circle":
        d.ellipse([m, m, s - m, s - m], fill=255)
    elif shape == "square":
        d.rectangle([m, m, s - m, s - m], fill=255)
    elif shape == "triangle":
        d.polygon([(s // 2, m), (s - m, s - m), (m, s - m)], fill=255)
    elif shape == "diamond":
        d.polygon([(s // 2, m), (s - m, s // 2), (s // 2, s - m), (m, s // 2)], fill=255)
    elif shape == "hexagon":
        pts = [(s / 2 + (s / 2 - m) * np.cos(a), s / 2 + (s / 2 - m) * np.sin(a))
               for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
        d.polygon(pts, fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            r = (s / 2 - m) if k % 2 == 0 else (s / 5)
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((s / 2 + r * np.cos(a), s / 2 + r * np.sin(a)))
        d.polygon(pts, fill=255)
    elif shape == "bottle":
        d.rectangle([s // 3, m, 2 * s // 3, s // 4], fill=255)
        d.rounded_rectangle([s // 5, s // 4, 4 * s // 5, s - m], radius=s // 8, fill=255)
    elif shape == "tube":
        d.rounded_rectangle([s // 3, m, 2 * s // 3, s - m], radius=s // 6, fill=255)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape}")
    return mask


def _pattern(pattern: str, base: tuple[int, int, int], accent: tuple[int, int, int],
             size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), base)
    d = ImageDraw.Draw(img)
    step = max(4, size // 8)
    if pattern == "hstripes":
        for y in range(0, size, 2 * step):
            d.rectangle([0, y, size, y + step - 1], fill=accent)
    elif pattern == "vstripes":
        for x in range(0, size, 2 * step):
            d.rectangle([x, 0, x + step - 1, size], fill=accent)
    elif pattern == "dots":
        r = step // 2
        for y in range(step // 2, size, step * 2):
            for x in range(step // 2, size, step * 2):
                d.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif pattern == "checker":
        for y in range(0, size, step):
            for x in range((y // step) % 2 * step, size, 2 * step):
                d.rectangle([x, y, x + step - 1, y + step - 1], fill=accent)
    elif pattern == "ring":
        c = size // 2
        for r in range(size // 2, 0, -2 * step):
            d.ellipse([c - r, c - r, c + r, c + r], outline=accent, width=step // 2 + 1)
    return img


def signature_tile(inst: Instance, brand_color: int) -> Image.Image:
    """The product's RGBA signature at tile size."""
    return _tile(inst.shape, inst.pattern, brand_color, inst.accent, inst.glyph)


@functools.lru_cache(maxsize=4096)  # keyed by small ints: products recur across listings
def _tile(shape: int, pattern: int, color: int, accent_color: int, glyph: str) -> Image.Image:
    base, accent = PALETTE[color], PALETTE[accent_color]
    if base == accent:
        accent = tuple(255 - c for c in base)
    body = _pattern(PATTERNS[pattern], base, accent, _TILE)
    d = ImageDraw.Draw(body)
    glyph_color = (255, 255, 255) if sum(base) < 384 else (0, 0, 0)
    d.text((_TILE // 2, _TILE // 2), glyph, fill=glyph_color, font=_font(), anchor="mm")
    tile = Image.new("RGBA", (_TILE, _TILE), (0, 0, 0, 0))
    tile.paste(body, (0, 0), _shape_mask(SHAPES[shape], _TILE))
    return tile


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=_TILE // 3)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _clutter(rng: np.random.Generator, size: int) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(170, 256, size=3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        color = tuple(int(v) for v in rng.integers(60, 256, size=3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, size=4))
        if rng.random() < 0.5:
            d.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(1, 4)))
        else:
            d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=color)
    return img


def render_listing(rng: np.random.Generator, products: list[tuple[Instance, int]], size: int,
                   quality: int) -> bytes:
    """JPEG bytes of a listing showing ``products`` as (instance, brand colour) pairs."""
    img = _clutter(rng, size)
    n = len(products)
    scale_hi = 0.75 if n == 1 else max(0.3, 0.9 / np.sqrt(n))
    for inst, color in products:
        side = max(8, int(size * rng.uniform(scale_hi * 0.6, scale_hi)))
        tile = signature_tile(inst, color).resize((side, side), Image.BILINEAR)
        tile = tile.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR, expand=True)
        x = int(rng.integers(0, max(1, size - tile.width // 2))) - tile.width // 4
        y = int(rng.integers(0, max(1, size - tile.height // 2))) - tile.height // 4
        img.paste(tile, (x, y), tile)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()

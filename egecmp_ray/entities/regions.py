"""Image regions: 36 region features + 5-d boxes per item (DESIGN.md section 3).

Default: a 6x6 grid over the decoded image; each cell's feature is its pixels at 4x4 (RGB),
its colour mean/std, a hue histogram and its edge energy (64-d). A user with detector
features (e.g. CAPTURE's 36x2048 Faster R-CNN boxes) sets ``entities.region_features`` to a
directory of ``<item_id>.npz`` files instead.
An item without an image gets zero features *and* ``image_mask = False``: the model is told
there is no image, rather than shown a black one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

GRID = 6
NUM_REGIONS = GRID * GRID
CELL_PIXELS = 4  # each cell is summarised at 4x4 RGB
HUE_BINS = 8
GRID_FEATURE_DIM = CELL_PIXELS * CELL_PIXELS * 3 + 3 + 3 + HUE_BINS + 2  # 64
BOX_DIM = 5


def grid_boxes() -> np.ndarray:
    """``[36, 5]`` boxes of the grid cells: x1/W, y1/H, x2/W, y2/H, area."""
    edges = np.linspace(0.0, 1.0, GRID + 1, dtype=np.float32)
    y1, x1 = np.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y2, x2 = np.meshgrid(edges[1:], edges[1:], indexing="ij")
    boxes = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], axis=-1)
    return boxes.reshape(NUM_REGIONS, BOX_DIM)


_BOXES = grid_boxes()


def _hue_and_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in [0, 1) and max - min of float RGB in [0, 1] (vectorised; max/min of the three
    channel views: a reduction over a trailing axis of 3 was the features' largest cost)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    sat = mx - mn
    delta = np.where(sat == 0, 1.0, sat)
    h = np.where(mx == r, (g - b) / delta % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4))
    return (h / 6.0) % 1.0, sat


DECODE_SIDE = GRID * CELL_PIXELS * 2 * 2  # 96: JPEG draft size (decode at 1/2..1/8 scale)
GRID_BATCH = 256  # images a grid_features_batch call (region_batch, preprocess): ~7 MB of pixels


def grid_features(image_bytes: bytes) -> np.ndarray:
    """``[36, 64]`` float32 features of one encoded image."""
    return grid_features_batch(grid_pixels(image_bytes))


def decoded(image_bytes: bytes) -> Image.Image:
    """An encoded image opened and decoded at ``DECODE_SIDE`` (JPEG: at reduced scale)."""
    im = Image.open(io.BytesIO(image_bytes))
    im.draft("RGB", (DECODE_SIDE, DECODE_SIDE))  # much faster than a full-size decode
    return im


def grid_pixels(image: Image.Image | bytes) -> np.ndarray:
    """``[48, 48, 3]`` float32 RGB in [0, 1] of an opened (or encoded) image: what
    ``grid_features_batch`` takes, one image's worth."""
    side = GRID * CELL_PIXELS * 2  # 48: decode small, then pool 2x2 into the 4x4 cell summary
    if isinstance(image, bytes):
        with decoded(image) as im:
            return grid_pixels(im)
    return np.asarray(image.convert("RGB").resize((side, side), Image.BILINEAR),
                      dtype=np.float32) / 255.0


def grid_feature_bytes(pixels: np.ndarray) -> list[bytes]:
    """``[n, 48, 48, 3]`` pixels (``grid_pixels`` of images validation decoded) -> each
    image's grid features as float16 bytes, the shards' storage type."""
    return [f.tobytes() for f in grid_features_batch(pixels).astype(np.float16)]


def grid_features_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of ``grid_feature_bytes``: ``[36, 64]`` float16."""
    return np.frombuffer(data, dtype=np.float16).reshape(NUM_REGIONS, GRID_FEATURE_DIM)


def grid_features_batch(pixels: np.ndarray) -> np.ndarray:
    """``[..., 48, 48, 3]`` pixels -> ``[..., 36, 64]`` float32 features, each image's bit for
    bit what it gets alone. Measured on 2k images, pixels included: 1.18 s in one call per
    image, 0.90 s in calls of 256 (1.85 s before the channel max/min change)."""
    lead = pixels.shape[:-3]
    # [..., 6, 8, 6, 8, 3] -> [..., 6, 6, 8, 8, 3]: the 36 cells of 8x8 pixels
    cells = pixels.reshape(*lead, GRID, 8, GRID, 8, 3).swapaxes(-4, -3)
    pooled = cells.reshape(*lead, GRID, GRID, CELL_PIXELS, 2, CELL_PIXELS, 2, 3).mean(axis=(-4, -2))
    flat = cells.reshape(*lead, GRID, GRID, 64, 3)
    mean, std = flat.mean(-2), flat.std(-2)
    hue, sat = _hue_and_saturation(flat)  # weight hues by saturation: grey has no hue
    hue_bins = np.minimum((hue * HUE_BINS).astype(np.int64), HUE_BINS - 1)
    hist = np.zeros((*lead, GRID, GRID, HUE_BINS), dtype=np.float32)
    for k in range(HUE_BINS):
        hist[..., k] = ((hue_bins == k) * sat).mean(-1)
    gray = cells.mean(-1)
    edges = np.stack([np.abs(np.diff(gray, axis=-2)).mean((-2, -1)),
                      np.abs(np.diff(gray, axis=-1)).mean((-2, -1))], axis=-1)
    feats = np.concatenate([pooled.reshape(*lead, GRID, GRID, -1), mean, std, hist, edges], axis=-1)
    return feats.reshape(*lead, NUM_REGIONS, GRID_FEATURE_DIM).astype(np.float32)


def load_precomputed(directory: str, item_id: str, dim: Optional[int] = None
                     ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(features ``[36, D]``, boxes ``[36, 5]``) from ``<directory>/<item_id>.npz``, or None."""
    path = Path(directory) / f"{item_id}.npz"
    if not path.is_file():
        return None
    with np.load(path) as f:
        feats, boxes = f["features"], f["boxes"]
    if feats.ndim != 2 or boxes.shape != (feats.shape[0], BOX_DIM):
        raise ValueError(f"{path}: want features [R, D] and boxes [R, 5], got {feats.shape}, {boxes.shape}")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(f"{path}: features are {feats.shape[1]}-d, the directory's first file {dim}-d")
    if not (np.isfinite(feats).all() and np.isfinite(boxes).all()):
        raise ValueError(f"{path}: non-finite region features or boxes")
    return feats, boxes


def precomputed_dim(directory: str) -> int:
    """Feature size of a precomputed-regions directory (from its first file)."""
    first = next(Path(directory).glob("*.npz"), None)
    if first is None:
        raise FileNotFoundError(f"no <item_id>.npz region files in {directory}")
    with np.load(first) as f:
        return int(f["features"].shape[-1])


def region_batch(images: list[Optional[bytes]], item_ids: Optional[list[str]] = None,
                 precomputed_dir: Optional[str] = None, dim: int = GRID_FEATURE_DIM
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features ``[n, 36, D]`` float16, boxes ``[n, 36, 5]`` float32, image_mask ``[n]`` bool).

    With ``precomputed_dir``, regions come from its files only (an item without one is masked:
    grid and detector features do not mix); otherwise from the grid over each image.
    """
    n = len(images)
    # Grid features are in [0, 1]: float16 halves the shards. Detector features keep float32
    # (their range is unknown; float16 overflows past 65504).
    feats = np.zeros((n, NUM_REGIONS, dim), dtype=np.float32 if precomputed_dir else np.float16)
    boxes = np.zeros((n, NUM_REGIONS, BOX_DIM), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    if precomputed_dir is None:  # the grid: images' pixels, featurised GRID_BATCH at a time
        at = [i for i, data in enumerate(images) if data is not None]
        for start in range(0, len(at), GRID_BATCH):
            part = at[start:start + GRID_BATCH]
            feats[part] = grid_features_batch(np.stack([grid_pixels(images[i]) for i in part]))
            boxes[part], mask[part] = _BOXES, True
        return feats, boxes, mask
    for i in range(n):
        found = load_precomputed(precomputed_dir, item_ids[i], dim) if item_ids else None
        if found is not None:
            r = min(NUM_REGIONS, len(found[0]))
            feats[i, :r], boxes[i, :r], mask[i] = found[0][:r], found[1][:r], True
    return feats, boxes, mask


def grid_region_batch(feature_bytes: list[Optional[bytes]]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``region_batch``'s grid result from features already computed on validation's decode
    (``grid_feature_bytes``; None: no image): no image is decoded again."""
    feats, boxes, mask = region_batch([None] * len(feature_bytes))
    for i, data in enumerate(feature_bytes):
        if data is not None:
            feats[i], boxes[i], mask[i] = grid_features_from_bytes(data), _BOXES, True
    return feats, boxes, mask

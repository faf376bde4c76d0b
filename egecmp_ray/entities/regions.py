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


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of float RGB in [0, 1] (vectorised, no per-pixel Python)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = np.where(mx - mn == 0, 1.0, mx - mn)
    h = np.where(mx == r, (g - b) / delta % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4))
    return (h / 6.0) % 1.0


DECODE_SIDE = GRID * CELL_PIXELS * 2 * 2  # 96: JPEG draft size (decode at 1/2..1/8 scale)


def grid_features(image_bytes: bytes) -> np.ndarray:
    """``[36, 64]`` float32 features of one encoded image."""
    with Image.open(io.BytesIO(image_bytes)) as im:
        im.draft("RGB", (DECODE_SIDE, DECODE_SIDE))  # much faster than a full-size decode
        return grid_features_of(im)


def grid_feature_bytes(im: Image.Image) -> bytes:
    """An image decoded at ``DECODE_SIDE`` (by validation) -> its grid features as float16
    bytes, the shards' storage type: preprocess validates and featurises with one decode."""
    return grid_features_of(im).astype(np.float16).tobytes()


def grid_features_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of ``grid_feature_bytes``: ``[36, 64]`` float16."""
    return np.frombuffer(data, dtype=np.float16).reshape(NUM_REGIONS, GRID_FEATURE_DIM)


def grid_features_of(im: Image.Image) -> np.ndarray:
    """``[36, 64]`` float32 features of one opened image."""
    side = GRID * CELL_PIXELS * 2  # 48: decode small, then pool 2x2 into the 4x4 cell summary
    px = np.asarray(im.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.float32) / 255.0
    # [6, 8, 6, 8, 3] -> [6, 6, 8, 8, 3]: the 36 cells of 8x8 pixels
    cells = px.reshape(GRID, 8, GRID, 8, 3).transpose(0, 2, 1, 3, 4)
    pooled = cells.reshape(GRID, GRID, CELL_PIXELS, 2, CELL_PIXELS, 2, 3).mean(axis=(3, 5))
    flat = cells.reshape(GRID, GRID, 64, 3)
    mean, std = flat.mean(2), flat.std(2)
    hue_bins = np.minimum((_hue(flat) * HUE_BINS).astype(np.int64), HUE_BINS - 1)
    sat = flat.max(-1) - flat.min(-1)  # weight hues by saturation: grey has no hue
    hist = np.zeros((GRID, GRID, HUE_BINS), dtype=np.float32)
    for k in range(HUE_BINS):
        hist[..., k] = ((hue_bins == k) * sat).mean(2)
    gray = cells.mean(-1)
    edges = np.stack([np.abs(np.diff(gray, axis=2)).mean((2, 3)),
                      np.abs(np.diff(gray, axis=3)).mean((2, 3))], axis=-1)
    feats = np.concatenate([pooled.reshape(GRID, GRID, -1), mean, std, hist, edges], axis=-1)
    return feats.reshape(NUM_REGIONS, GRID_FEATURE_DIM).astype(np.float32)


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
    for i, data in enumerate(images):
        if precomputed_dir is not None:
            found = load_precomputed(precomputed_dir, item_ids[i], dim) if item_ids else None
            if found is None:
                continue
            r = min(NUM_REGIONS, len(found[0]))
            feats[i, :r], boxes[i, :r] = found[0][:r], found[1][:r]
        elif data is not None:
            feats[i], boxes[i] = grid_features(data), _BOXES
        else:
            continue
        mask[i] = True
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

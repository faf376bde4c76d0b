"""The synthetic product catalogue: brands with aliases, series with spellings, instances.

Everything is a pure function of ``(seed, num_brands, num_instances)`` so every Ray worker
rebuilds the same catalogue locally instead of shipping it around. The catalogue is built to be
hard in Product1M's ways: a brand is written several ways (``SK-II``/``sk2``/``SKII``), series
have several spellings, and products of one brand share its colour (visual hard negatives).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Latin syllables and the Chinese character each is transliterated with (a brand's Chinese name).
_SYLLABLES = {
    "lu": "露", "mo": "摩", "ra": "拉", "ka": "卡", "vi": "薇", "sa": "莎", "ne": "妮", "to": "朵",
    "ri": "丽", "el": "尔", "an": "安", "zo": "佐", "be": "贝", "la": "兰", "mi": "米", "xi": "希",
    "or": "欧", "ve": "维", "qu": "曲", "ta": "塔", "fi": "菲", "so": "索", "ni": "尼", "da": "达",
}
_ROMAN = {2: "II", 3: "III", 4: "IV", 5: "V"}
_SERIES_HEAD = "黄白红蓝紫金银雪玉水光青极晶花樱竹海星月冰珍"
_SERIES_TAIL = "金光颜肌润活萃妍韵钻漾雅焕彩恒源瓶露皙"
_SERIES_CODES = ("GOLD", "AQUA", "PURE", "LUXE", "ROSE", "PEARL", "NOVA", "ZEN", "VITA", "GLOW")

# (canonical category, synonyms, spec unit)
CATEGORIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("面霜", ("面霜", "乳霜", "霜"), "g"),
    ("精华液", ("精华液", "精华", "原液"), "ml"),
    ("爽肤水", ("爽肤水", "化妆水", "水"), "ml"),
    ("乳液", ("乳液", "乳", "保湿乳"), "ml"),
    ("眼霜", ("眼霜", "眼部精华霜"), "g"),
    ("洗面奶", ("洗面奶", "洁面乳", "洁面"), "g"),
    ("面膜", ("面膜", "贴片面膜", "膜"), "片"),
    ("防晒霜", ("防晒霜", "防晒乳", "防晒"), "ml"),
    ("口红", ("口红", "唇膏", "唇釉"), "支"),
    ("粉底液", ("粉底液", "粉底"), "ml"),
    ("卸妆水", ("卸妆水", "卸妆液"), "ml"),
    ("洗发水", ("洗发水", "洗发露"), "ml"),
    ("护发素", ("护发素", "润发乳"), "ml"),
    ("沐浴露", ("沐浴露", "沐浴乳"), "ml"),
    ("身体乳", ("身体乳", "润肤乳"), "ml"),
    ("香水", ("香水", "淡香水", "香氛"), "ml"),
    ("牙膏", ("牙膏", "美白牙膏"), "g"),
    ("奶粉", ("奶粉", "婴儿奶粉", "配方奶粉"), "g"),
    ("纸尿裤", ("纸尿裤", "尿不湿"), "片"),
    ("咖啡", ("咖啡", "速溶咖啡", "咖啡粉"), "g"),
    ("护手霜", ("护手霜", "手霜"), "g"),
    ("隔离霜", ("隔离霜", "妆前乳", "隔离"), "ml"),
)
VARIANTS = ("", "滋润型", "清爽型", "男士", "限量版", "01号", "02号", "升级版", "经典款", "补水",
            "美白", "修护", "孕妇", "儿童")
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "bottle", "tube")
PATTERNS = ("solid", "hstripes", "vstripes", "dots", "checker", "ring")
PALETTE = (
    (220, 40, 40), (240, 140, 30), (240, 210, 40), (60, 170, 70), (30, 150, 150), (40, 90, 210),
    (120, 60, 200), (210, 70, 160), (120, 80, 40), (30, 30, 30), (245, 245, 245), (150, 150, 150),
    (250, 180, 190), (160, 210, 240), (200, 220, 120), (90, 30, 60),
)
GLYPHS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class Brand:
    canonical: str  # the name used in labels
    aliases: tuple[str, ...]  # ways sellers write it, canonical included
    color: int  # index into PALETTE: every product of the brand carries it


@dataclass(frozen=True)
class Series:
    name: str
    spellings: tuple[str, ...]


@dataclass(frozen=True)
class Instance:
    """One product: what a label names and what a gallery item shows."""

    index: int
    brand: int
    series: Series
    category: int
    variant: str
    price: float
    shape: int
    pattern: int
    accent: int  # secondary colour
    glyph: str

    @property
    def category_name(self) -> str:
        return CATEGORIES[self.category][0]


@dataclass(frozen=True, eq=False)  # identity hash: hashing every instance per call is slow
class Catalog:
    brands: tuple[Brand, ...]
    instances: tuple[Instance, ...]
    brand_members: tuple[tuple[int, ...], ...]  # instance indices of each brand

    def label(self, inst: Instance) -> str:
        """The instance label, Product1M style: ``'<brand> <series><category><variant>'``."""
        return f"{self.brands[inst.brand].canonical} {inst.series.name}{inst.category_name}{inst.variant}"

    def by_brand(self, brand: int) -> tuple[int, ...]:
        return self.brand_members[brand]


def _latin_brand(rng: np.random.Generator, taken: set[str]) -> Brand | None:
    keys = list(_SYLLABLES)
    n = int(rng.integers(2, 4))
    sylls = [keys[int(i)] for i in rng.integers(0, len(keys), size=n)]
    name = "".join(sylls).capitalize()
    if name in taken:
        return None
    chinese = "".join(_SYLLABLES[s] for s in sylls)
    split = max(1, len(sylls) // 2)
    hyphen = "".join(sylls[:split]).capitalize() + "-" + "".join(sylls[split:]).capitalize()
    aliases = (name, name.upper(), name.lower(), chinese, hyphen)
    return Brand(name, aliases, int(rng.integers(0, len(PALETTE))))


def _letter_brand(rng: np.random.Generator, taken: set[str]) -> Brand | None:
    """Brands like SK-II / AHC whose sellers write them with digits, dots or lower case."""
    letters = "".join(chr(ord("A") + int(i)) for i in rng.integers(0, 26, size=int(rng.integers(2, 4))))
    if rng.random() < 0.5:
        num = int(rng.integers(2, 6))
        name = f"{letters}-{_ROMAN[num]}"
        aliases = (name, f"{letters}{_ROMAN[num]}", f"{letters.lower()}{num}", f"{letters}{num}")
    else:
        name = letters
        aliases = (name, letters.lower(), ".".join(letters), f"{letters}官方")
    if name in taken:
        return None
    return Brand(name, aliases, int(rng.integers(0, len(PALETTE))))


def _series(rng: np.random.Generator) -> Series:
    name = _SERIES_HEAD[int(rng.integers(len(_SERIES_HEAD)))] + _SERIES_TAIL[int(rng.integers(len(_SERIES_TAIL)))]
    code = _SERIES_CODES[int(rng.integers(len(_SERIES_CODES)))]
    return Series(name, (name, f"{name}系列", f"{name}款", code))


@functools.lru_cache(maxsize=8)
def build_catalog(seed: int, num_brands: int, num_instances: int) -> Catalog:
    """Deterministic catalogue; cached per process so each worker builds it once."""
    rng = np.random.default_rng([seed, 0xCA7A])
    brands: list[Brand] = []
    taken: set[str] = set()
    for _ in range(num_brands * 100):  # bounded: a config past the name space fails loudly
        if len(brands) == num_brands:
            break
        maker = _letter_brand if rng.random() < 0.3 else _latin_brand
        brand = maker(rng, taken)
        if brand is not None:
            taken.add(brand.canonical)
            brands.append(brand)

    per_brand = max(1, num_instances // num_brands)
    series_of = [[_series(rng) for _ in range(max(1, per_brand // 3 + 1))] for _ in brands]
    instances: list[Instance] = []
    labels: set[str] = set()
    i = 0
    while len(instances) < num_instances:
        if i > num_instances * 100:
            raise ValueError(f"cannot make {num_instances} distinct instances from {num_brands} brands")
        b = i % num_brands
        i += 1
        series = series_of[b][int(rng.integers(len(series_of[b])))]
        category = int(rng.integers(len(CATEGORIES)))
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))] if rng.random() < 0.5 else ""
        label = f"{brands[b].canonical} {series.name}{CATEGORIES[category][0]}{variant}"
        if label in labels:
            continue
        labels.add(label)
        price = float(np.round(np.exp(rng.uniform(np.log(19), np.log(1500))))) - 0.1
        instances.append(Instance(
            index=len(instances), brand=b, series=series, category=category, variant=variant,
            price=price, shape=int(rng.integers(len(SHAPES))),
            pattern=int(rng.integers(len(PATTERNS))), accent=int(rng.integers(len(PALETTE))),
            glyph=GLYPHS[int(rng.integers(len(GLYPHS)))],
        ))
    if len(brands) < num_brands:
        raise ValueError(f"cannot make {num_brands} distinct brand names")
    members: list[list[int]] = [[] for _ in brands]
    for inst in instances:
        members[inst.brand].append(inst.index)
    return Catalog(tuple(brands), tuple(instances), tuple(tuple(m) for m in members))

"""The Product1M line reader: real dev file, hand-written lines, byte-range splitting."""

from collections import Counter

import pytest

from egecmp_ray.data import product1m
from egecmp_ray.data.schema import TAGGED_SCHEMA
from egecmp_ray.data.validate import Limits, validate_table

GOOD = ("623174602918#####韩国ahc黄金套盒正品蜗牛玻尿酸水乳24K精华套装#####https://a/1.jpg#####"
        "http://b/1.jpg#####AHC 黄金面霜#;#AHC 黄金水#;#AHC 黄金眼霜#;#AHC 黄金眼霜")


def test_parse_good_line_keeps_repeated_labels():
    row = product1m.parse_line(GOOD.encode(), "dev")
    assert row["reason"] is None and row["raw"] is None
    assert row["item_id"] == "623174602918"
    assert row["title"].startswith("韩国ahc黄金套盒")
    assert row["labels"] == ["AHC 黄金面霜", "AHC 黄金水", "AHC 黄金眼霜", "AHC 黄金眼霜"]
    assert row["image_url"] == "https://a/1.jpg"
    assert row["has_image"] is False and row["image"] is None
    assert row["split"] == "dev" and row["source"] == "product1m"


def test_train_lines_may_have_four_fields():
    row = product1m.parse_line(b"1#####some title#####u1#####u2", "train")
    assert row["reason"] is None and row["labels"] == []
    bad = product1m.parse_line(b"1#####some title#####u1#####u2", "dev")
    assert bad["reason"].startswith("wrong_field_count: 4 fields")


@pytest.mark.parametrize("line, reason", [
    (b"123#####title only", "wrong_field_count"),
    (b"1#####t#####u#####u#####l#####extra", "wrong_field_count"),
    ("9#####坏标题".encode() + b"\xff\xfe" + "#####u#####u#####AHC 黄金水".encode(), "non_utf8_text"),
])
def test_malformed_lines_are_tagged_with_raw_bytes(line, reason):
    row = product1m.parse_line(line, "dev")
    assert row["reason"].startswith(reason)
    assert row["raw"] == line  # nothing lost


CUT = "9#####雅诗兰黛小棕瓶精华".encode()[:-1] + "#####u#####u#####AHC 黄金水".encode()


def test_title_cut_mid_character_is_repaired_not_quarantined(tmp_path):
    """Product1M titles were truncated by bytes: the incomplete last character is dropped."""
    row = product1m.parse_line(CUT, "dev")
    assert row["reason"] is None and row["title"] == "雅诗兰黛小棕瓶精"
    assert product1m.line_repaired(CUT) and not product1m.line_repaired(GOOD.encode())
    path = tmp_path / "product1m_dev_x.txt"
    path.write_bytes(b"\n".join([GOOD.encode(), CUT, CUT.replace(b"AHC", b"\xff")]) + b"\n")
    assert product1m.line_counts(str(path)) == (3, 1)  # a broken label is not repaired


@pytest.mark.parametrize("line", [
    "9#####标题#####u#####u#####黄金水".encode()[:-1],  # a cut label: which product is unknown
    "9".encode() + "标".encode()[:2] + "#####标题#####u#####u#####L".encode(),  # a cut id
    "9#####坏".encode() + b"\xe6\x20" + "标题#####u#####u#####L".encode(),  # broken mid-title
])
def test_broken_bytes_other_than_a_cut_title_end_stay_quarantined(line):
    row = product1m.parse_line(line, "dev")
    assert row["reason"] == "non_utf8_text" and row["raw"] == line
    assert not product1m.line_repaired(line)


def test_image_directory(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "623174602918.jpg")
    images = (product1m.storage.resolve(str(tmp_path)))
    row = product1m.parse_line(GOOD.encode(), "dev", images)
    assert row["has_image"] and row["image"][:2] == b"\xff\xd8"
    other = product1m.parse_line(GOOD.replace("623174602918", "42").encode(), "dev", images)
    assert other["has_image"] is False and other["reason"] is None  # kept, flagged


def test_infer_split():
    assert product1m.infer_split("x/product1m_dev_ossurl_v2.txt") == "dev"
    assert product1m.infer_split("product1m_gallery_ossurl_v2.txt") == "gallery"
    assert product1m.infer_split("product1m_test_ossurl_v2.txt") == "test"
    assert product1m.infer_split("anything.txt") == "train"


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000, 10**6])
def test_byte_ranges_read_every_line_exactly_once(tmp_path, chunk):
    lines = [f"{i}#####标题{i}#####u#####u#####L{i % 3}" for i in range(200)]
    path = tmp_path / "product1m_dev.txt"
    path.write_text("\n".join(lines) + ("\n" if chunk % 2 else ""), encoding="utf-8")
    got = []
    for r in product1m.plan_ranges(str(path), chunk_bytes=chunk):
        got += list(product1m.iter_range_lines(r["path"], r["start"], r["stop"]))
    assert [line.decode() for _, line in got] == lines
    data = path.read_bytes()
    assert all(data[offset:].startswith(line) for offset, line in got)  # offsets point at lines
    assert product1m.count_lines(str(path)) == 200


def test_read_range_batch_matches_schema_and_skips_blank_lines(tmp_path):
    path = tmp_path / "product1m_dev.txt"
    path.write_bytes(GOOD.encode() + b"\n\n   \n" + b"2#####bad\n")
    ranges = product1m.plan_ranges(str(path), chunk_bytes=1 << 20)
    (table,) = product1m.read_range_batch(
        {k: [r[k] for r in ranges] for k in ranges[0]}, split=None, images_dir=None)
    assert table.schema == TAGGED_SCHEMA
    assert table.num_rows == 2 == product1m.count_lines(str(path))
    assert table["reason"].to_pylist()[0] is None
    assert table["reason"].to_pylist()[1].startswith("wrong_field_count")


def test_real_dev_file(dev_file):
    ranges = product1m.plan_ranges(str(dev_file), chunk_bytes=100_000)
    assert len(ranges) > 5
    tables = [t for r in ranges for t in product1m.read_range_batch({k: [r[k]] for k in r}, None, None,
                                                                      rows_per_batch=100)]
    rows = [row for t in tables for row in t.to_pylist()]
    assert len(rows) == 2673 == product1m.count_lines(str(dev_file))
    assert len({r["item_id"] for r in rows}) == 2673
    assert all(r["split"] == "dev" and 1 <= len(r["labels"]) <= 12 for r in rows)
    labels = Counter(lab for r in rows for lab in r["labels"])
    assert len(labels) == 295  # the dataset README's count
    assert any(lab.startswith("AHC ") for lab in labels)
    # Every dev row is well-formed (text only: no images here) and passes validation.
    import pyarrow as pa
    tagged = validate_table(pa.concat_tables(tables), Limits())
    assert tagged["reason"].null_count == tagged.num_rows

"""Title cleaning, entity extraction and the tokenizer, on real Product1M titles."""

import numpy as np
import pytest

from egecmp_ray.data.clean import clean_title
from egecmp_ray.entities.extract import is_noise, jieba_entities, load_extractor
from egecmp_ray.entities.tokenizer import (PAD, SEP, encode_padded, load_tokenizer, save_tokenizer,
                                           train_wordpiece)


def test_clean_title_punctuation_to_spaces():
    assert clean_title("【正品】SK-II 神仙水，230ml！") == "正品 SK II 神仙水 230ml"
    assert clean_title("a《b》c——d（e）") == "a b c d e"
    assert clean_title("AHC＋面霜 ５０ｍｌ\u200b") == "AHC 面霜 50ml"  # full width folded


def test_symbols_are_not_entities():
    ents = jieba_entities(clean_title("▲雅诗兰黛◆小棕瓶㊣ 兰蔻\u200b小黑瓶"))
    assert "雅诗兰黛" in ents and "兰蔻" in ents
    assert not any(ch in "".join(ents) for ch in "▲◆㊣\u200b")


@pytest.mark.parametrize("word", ["50ml", "230", "3.5g", "24k", "x100", "2020", "包邮", "正品",
                                  "韩国", "套装", "ml", "片"])
def test_noise_words(word):
    assert is_noise(word)


@pytest.mark.parametrize("word", ["sk2", "ahc", "黄金", "面霜", "b5", "神仙水"])
def test_not_noise(word):
    assert not is_noise(word)


def test_real_titles_brands_in_numbers_out(dev_file):
    lines = dev_file.read_text(encoding="utf-8").splitlines()
    found = {}
    for line in lines:
        fields = line.split("#####")
        ents = jieba_entities(clean_title(fields[1]))
        assert len(ents) <= 15 and len(set(ents)) == len(ents)
        for e in ents:
            assert not any(ch.isdigit() for ch in e) or sum(ch.isdigit() for ch in e) < 2, e
            assert e not in ("包邮", "正品", "韩国", "ml", "套装"), e
        for brand in ("ahc", "sk2"):
            if brand in fields[1].lower():
                found.setdefault(brand, []).append(brand in ents)
    # Brands come out as entities in the titles that name them.
    for brand in ("ahc", "sk2"):
        assert np.mean(found[brand]) > 0.8, (brand, np.mean(found[brand]))


def test_ahc_title():
    ents = jieba_entities(clean_title("韩国ahc黄金套盒正品蜗牛玻尿酸水乳24K精华套装"))
    assert "ahc" in ents and "黄金" in ents and "精华" in ents
    assert not {"韩国", "正品", "24k", "套装", "套盒"} & set(ents)


def test_max_entities():
    assert len(jieba_entities("面霜 精华 眼霜 爽肤水 乳液 面膜 口红", max_entities=3)) == 3


def my_extractor(title):
    return [w for w in title.split() if w.isalpha()] + ["DUP", "dup", "x\ty"]


def test_pluggable_extractor():
    fn = load_extractor("test_entities:my_extractor", max_entities=3)
    assert fn("aa 12 bb cc dd") == ["aa", "bb", "cc"]
    assert load_extractor("test_entities:my_extractor")("x") == ["x", "dup", "x y"]
    with pytest.raises(ValueError, match="module.path:function"):
        load_extractor("nonsense")


def test_tokenizer_chinese_per_character_and_roundtrip(tmp_path):
    texts = ["韩国ahc黄金面霜", "sk2 神仙水 精华", "ahc 黄金 水乳"] * 20
    tok = train_wordpiece(texts, vocab_size=200, min_frequency=1)
    enc = tok.encode("ahc黄金面霜")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert "黄" in enc.tokens and "金" in enc.tokens  # CJK split per character
    ids = encode_padded(tok, ["ahc 黄金", f"黄金 {SEP} 面霜", "长" * 100], max_len=12)
    assert ids.shape == (3, 12) and ids.dtype == np.int32
    assert ids[0, -1] == tok.token_to_id(PAD) and ids[2, -1] == tok.token_to_id(SEP)
    assert (ids[1] == tok.token_to_id(SEP)).sum() == 2  # the joiner is a real [SEP]
    save_tokenizer(tok, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode("ahc黄金面霜").ids == enc.ids
    # A user's BERT-style vocab.txt alone also loads.
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text((tmp_path / "tok" / "vocab.txt").read_text())
    assert load_tokenizer(tmp_path / "bert").encode("ahc黄金面霜").ids == enc.ids
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nothing")


def test_split_words_are_the_tokenizers_words_for_any_character():
    """The fast splitter (one ``str.translate``) against the tokenizer's own normalizer and
    pre-tokenizer, string by string: real Product1M titles, and 30,000 random code points of
    every plane, each at a word's start, middle and end, alone, and beside CJK and sigma."""
    import random

    from tokenizers import normalizers, pre_tokenizers

    from conftest import DEV_FILE
    from egecmp_ray.entities.tokenizer import split_words

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=False, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()

    def tokenizers_words(text):
        return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]

    rng = random.Random(0)
    codes = [c for c in (rng.randrange(0x110000) for _ in range(30000)) if not 0xD800 <= c <= 0xDFFF]
    codes += list(range(0x3000)) + [0x3000, 0xFEFF, 0xFF0C, 0x200B, 0x2028, 0xFFFD, 0x4E2D]
    texts = [f"ab{chr(c)}cd {chr(c)}Σ{chr(c)} 中{chr(c)}" for c in codes]
    if DEV_FILE.exists():
        texts += DEV_FILE.read_text(encoding="utf-8").splitlines()
    texts += ["SK-II 神仙水230ml【正品】ΣΑΣ ΟΔΟΣ İstanbul", "", "   ", "a\x00b\tc"]
    assert [split_words(t) for t in texts] == [tokenizers_words(t) for t in texts]


def test_text_features_encode_each_entity_as_alone(tmp_path):
    """Entities are tokenized once per distinct name in a batch and scattered into their
    slots: every slot must hold what tokenizing that entity alone gives, empty slots [PAD]."""
    from egecmp_ray.config import EntityConfig
    from egecmp_ray.entities.encode import text_features, write_vocab

    tok = train_wordpiece(["韩国ahc黄金面霜", "sk2 神仙水 精华", "ahc 黄金 水乳"] * 20,
                          vocab_size=200, min_frequency=1)
    save_tokenizer(tok, tmp_path)
    write_vocab(tmp_path / "entities.tsv", [("ahc", 9), ("黄金", 5)])
    cfg = EntityConfig(max_entities=3, entity_tokens=4)
    entities = [["ahc", "黄金", "sk2"], [], ["黄金", "ahc"], ["神仙水精华很长的名字"],
                ["ahc", "ahc", ""]]  # a name twice in one row; an empty name
    f = text_features(["a", "b", "c", "d", "e"], entities, cfg, str(tmp_path))
    pad = tok.token_to_id(PAD)
    for i, ents in enumerate(entities):
        for j in range(cfg.max_entities):
            want = (encode_padded(tok, [ents[j]], cfg.entity_tokens)[0] if j < len(ents)
                    else np.full(cfg.entity_tokens, pad))
            assert f["entity_token_ids"][i, j].tolist() == want.tolist(), (i, j)
    assert f["entity_ids"].tolist() == [[0, 1, -1], [-1, -1, -1], [1, 0, -1], [-1, -1, -1],
                                        [0, 0, -1]]
    assert f["entity_mask"].sum(1).tolist() == [3, 0, 2, 1, 3]
    assert f["entity_token_ids"].dtype == np.int32
    none = text_features(["a"], [[]], cfg, str(tmp_path))  # a batch with no entity at all
    assert (none["entity_token_ids"] == pad).all()

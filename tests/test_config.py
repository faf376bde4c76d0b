import pytest
import yaml

from egecmp_ray.config import (PRESETS, Config, ConfigError, config_from_dict, load_config,
                               parse_override)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_validate(preset):
    cfg = load_config(preset=preset)
    assert cfg.preset == preset
    assert cfg.model.hidden % cfg.model.text_heads == 0


def test_paper_preset_has_design_sizes():
    m = load_config(preset="paper").model
    assert (m.hidden, m.text_layers, m.text_heads, m.text_ffn) == (768, 4, 12, 3072)
    assert (m.image_hidden, m.image_layers, m.image_heads, m.image_ffn) == (768, 4, 8, 1024)
    assert (m.coattn_hidden, m.coattn_layers, m.coattn_heads) == (512, 4, 8)
    assert (m.cross_layers, m.num_regions, m.region_dim, m.embed_dim) == (6, 36, 2048, 512)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "tiny", "model": {"hidden": 128, "text_heads": 4},
                                    "train": {"lr": 3e-4}}))
    cfg = load_config(path, ["model.hidden=96", "train.workers=2", "index.index_type=HNSW",
                             "train.use_gpu=null"])
    assert cfg.preset == "tiny"
    assert cfg.model.hidden == 96  # the override beats the file
    assert cfg.model.text_heads == 4  # from the file
    assert cfg.model.text_layers == 1  # from the tiny preset
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.workers == 2
    assert cfg.index.index_type == "HNSW" and cfg.train.use_gpu is None


def test_int_widens_to_float_and_lists_parse():
    cfg = load_config(overrides=["serve.batch_wait_timeout_s=1", "model.losses=[mlm, mrm]"])
    assert cfg.serve.batch_wait_timeout_s == 1.0
    assert isinstance(cfg.serve.batch_wait_timeout_s, float)
    assert cfg.model.losses == ["mlm", "mrm"]


@pytest.mark.parametrize("override, key, words", [
    ("model.hiden=3", "model.hiden", "unknown key"),
    ("nosuch.x=1", "nosuch", "unknown key"),
    ("model.hidden=abc", "model.hidden", "integer"),
    ("model.hidden=250", "model.hidden", "divisible"),
    ("train.zero_stage=4", "train.zero_stage", "0, 1, 2 or 3"),
    ("data.rows=0", "data.rows", ">= 1"),
    ("data.images=maybe", "data.images", "true or false"),
    ("index.index_type=IVF_PQ", "index.index_type", "one of"),
    ("train.precision=fp8", "train.precision", "one of"),
    ("model.losses=[mlm, typo]", "model.losses", "unknown losses"),
    ("train.lr=2.0", "train.lr", "(0, 1)"),
    ("serve.port=70000", "serve.port", "65535"),
    ("model.hidden", "model.hidden", "key=value"),
    ("data.seed=-1", "data.seed", "non-negative"),
    ("data.num_instances=100000", "data.num_instances", "200 * num_brands"),
    ("data=5", "data", "mapping"),
    ("train.storage_path=http://host/runs", "train.storage_path", "a path every node sees"),
])
def test_bad_values_fail_fast_naming_the_key(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert err.value.key == key
    assert words in str(err.value) and key in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_last_preset_override_wins():
    assert load_config(overrides=["preset=paper", "preset=tiny"]).preset == "tiny"
    assert load_config(overrides=["preset=paper"], preset="tiny").preset == "tiny"  # the flag


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        load_config(overrides=["preset=huge"])


def test_roundtrip_and_hash():
    cfg = load_config(preset="tiny", overrides=["data.seed=7"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert cfg.hash("data") != load_config(preset="tiny").hash("data")
    assert cfg.hash("model") == load_config(preset="tiny").hash("model")


def test_parse_override_values():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert load_config(overrides=["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    assert parse_override("a.b=s3://x/y") == ("a.b", "s3://x/y")
    assert parse_override("a.b=") == ("a.b", "")


def test_default_config_is_small():
    assert Config().validate().preset == "small"
    assert load_config().preset == "small"

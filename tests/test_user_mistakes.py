"""User mistakes end in one clear line and exit 2, before any Ray work (issue 14): an --out that
is a file or cannot be written, a binary input, a RAY_ADDRESS where nothing answers, an empty
query file."""

import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from egecmp_ray import runtime
from egecmp_ray.cli import cli
from egecmp_ray.config import InputError, load_config
from egecmp_ray.data.product1m import binary_reason
from egecmp_ray.retrieval.evaluate import run_evaluate
from egecmp_ray.runtime import ray_endpoint

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("synth", "ingest", "preprocess", "pretrain", "evaluate", "demo")


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command gets as far as starting (or joining) Ray."""
    def refuse(*_, **__):
        raise AssertionError("init_ray was called: the mistake was not caught first")

    monkeypatch.setattr(runtime, "init_ray", refuse)


def _argv(command: str, tmp_path: Path, out: Path) -> list[str]:
    txt = tmp_path / "product1m_dev_x.txt"
    txt.write_text("1#####标题#####u#####u#####L\n", encoding="utf-8")
    inputs = {"synth": ["--rows", "10"], "ingest": ["--input", str(txt)],
              "preprocess": ["--input", str(txt)],
              "evaluate": ["--method", "tfidf", "--queries", str(txt), "--gallery", str(txt)],
              "pretrain": ["--data", str(tmp_path)], "demo": []}
    return [command, *inputs[command], "--out", str(out), "--preset", "tiny"]


def _one_clear_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and all(e in errors[0] for e in expected), result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_file_exits_2(command, tmp_path, no_ray):
    blocker = tmp_path / "results.txt"
    blocker.write_text("mine")
    result = CliRunner().invoke(cli, _argv(command, tmp_path, blocker))
    _one_clear_error(result, f"--out {blocker}: is an existing file, not a directory")
    result = CliRunner().invoke(cli, _argv(command, tmp_path, blocker / "sub"))
    _one_clear_error(result, f"--out {blocker / 'sub'}: cannot be created: {blocker} is a file")
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_out_exits_2(command, tmp_path, monkeypatch, no_ray):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: stand in for a read-only mount
            access = os.access
            monkeypatch.setattr(os, "access",
                                lambda p, mode, **kw: Path(p) != locked and access(p, mode, **kw))
        result = CliRunner().invoke(cli, _argv(command, tmp_path, locked))
        _one_clear_error(result, f"--out {locked}: is not writable")
        result = CliRunner().invoke(cli, _argv(command, tmp_path, locked / "new"))
        _one_clear_error(result, f"--out {locked / 'new'}: cannot be created: {locked} is not "
                                 "writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("product1m_dev_noise.txt", random.Random(0).randbytes(4096),
     "not a Product1M annotation file"),
    ("product1m_dev_picture.txt", _png(), "not a Product1M annotation file"),
    ("product1m_dev_gbk.txt", "1#####韩国黄金面霜正品#####u#####u#####面霜\n".encode("gbk") * 50,
     "not a Product1M annotation file"),
    ("picture.png", _png(), "is a file but not a Product1M .txt annotation file"),
])
def test_binary_input_exits_2_naming_the_file(name, content, message, tmp_path, no_ray):
    path = tmp_path / name
    path.write_bytes(content)
    for command in ("ingest", "preprocess"):
        result = CliRunner().invoke(cli, [command, "--input", str(path), "--out",
                                          str(tmp_path / "o"), "--preset", "tiny"])
        _one_clear_error(result, str(path), message)
    assert not (tmp_path / "o").exists()


def test_binary_file_in_a_parquet_directory_exits_2(tmp_path, no_ray):
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "part-0.parquet").write_bytes(_png())
    result = CliRunner().invoke(cli, ["ingest", "--input", str(tmp_path / "rows"), "--out",
                                      str(tmp_path / "o")])
    _one_clear_error(result, "part-0.parquet: not a Parquet file")


def test_text_with_a_few_bad_bytes_is_read_line_by_line():
    good = "".join(f"{i}#####韩国黄金面霜{i}#####u#####u#####面霜\n" for i in range(50)).encode()
    assert binary_reason(good) is None and binary_reason(b"") is None
    assert binary_reason(good + b"78#####\xff\xfe#####u#####u#####L\n" + good) is None
    assert "NUL" in binary_reason(good + b"\x00")


def test_ray_address_forms():
    assert ray_endpoint("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert ray_endpoint("ray://head:10001") == ("head", 10001)
    assert ray_endpoint("[::1]:6379") == ("::1", 6379)
    assert ray_endpoint("auto") is None and ray_endpoint("local") is None
    with pytest.raises(InputError, match="HTTP"):
        ray_endpoint("http://127.0.0.1:8265")
    with pytest.raises(InputError, match="expected host:port"):
        ray_endpoint("head-node")


def test_ray_address_that_does_not_answer_fails_fast(tmp_path):
    """Its own process (the session's Ray stays untouched), with the default wait."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    env.pop("EGECMP_RAY_CONNECT_TIMEOUT_S", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "egecmp_ray", "synth", "--rows", "10", "--out",
                           str(tmp_path / "s"), "--preset", "tiny"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert time.monotonic() - t0 < 40
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "RAY_ADDRESS=127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1" in proc.stderr


def test_empty_query_file_fails_before_the_gallery_is_indexed(tmp_path):
    empty = tmp_path / "product1m_dev_empty.txt"
    empty.write_bytes(b"\n\n")
    items = tmp_path / "product1m_gallery_x.txt"
    items.write_text("1#####标题#####u#####u#####L\n", encoding="utf-8")
    cfg = load_config(preset="tiny")
    out = tmp_path / "eval"
    for queries, gallery, flag in ((empty, items, "--queries"), (items, empty, "--gallery")):
        with pytest.raises(InputError, match=f"{flag} {empty}: no rows"):
            run_evaluate(str(queries), str(gallery), str(out), cfg, method="model",
                         model_dir=str(tmp_path / "no-model"))
    assert not out.exists()  # nothing embedded, indexed or written

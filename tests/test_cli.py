"""The command line: --help everywhere, exit codes, and the real entry points on tiny data."""

import json
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from egecmp_ray.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _summary(output: str, prefix: str) -> str:
    """The command's one-line summary (Ray may print log lines around it)."""
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert lines, output[-2000:]
    return lines[-1]


def _commands():
    return sorted(cli.commands)


@pytest.mark.parametrize("command", _commands())
def test_every_subcommand_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output


def test_config_commands_share_options():
    for command in ("synth", "ingest", "preprocess", "pretrain", "index", "evaluate", "model-info",
                    "demo", "bench"):
        out = CliRunner().invoke(cli, [command, "--help"]).output
        assert "--config" in out and "--set" in out and "--preset" in out


def test_bad_config_exits_2_naming_the_key(tmp_path):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "data.rows=-5"])
    assert result.exit_code == 2
    assert "data.rows" in result.output
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path), "--set", "data.nope=1"])
    assert result.exit_code == 2 and "data.nope" in result.output
    result = CliRunner().invoke(cli, ["synth"])
    assert result.exit_code == 2 and "--out" in result.output


def test_missing_input_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["ingest", "--input", str(tmp_path / "nope.txt"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not found" in result.output


def test_synth_then_ingest_through_the_cli(ray_session, tmp_path):
    out = tmp_path / "s"
    result = CliRunner().invoke(cli, ["synth", "--rows", "250", "--out", str(out), "--seed", "3",
                                      "--preset", "tiny", "--no-images"])
    assert result.exit_code == 0, result.output
    assert _summary(result.output, "synth:").startswith("synth: 250 rows")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["config"]["images"] is False

    result = CliRunner().invoke(cli, ["ingest", "--input", str(out), "--out", str(tmp_path / "i"),
                                      "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert _summary(result.output, "ingest:").startswith("ingest: 250 rows in, 250 kept")


@pytest.mark.slow
def test_demo_runs_end_to_end(ray_session, tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--preset", "tiny",
                                      "data.rows=200", "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    summary = _summary(result.output, "demo:")
    assert summary.startswith("demo: synth 200 rows") and "pretrain 3 steps" in summary
    assert "mAP@10" in summary and "serve 5 requests (statuses 200,200,200,200,422)" in summary
    assert "served at http://127.0.0.1:" in result.output
    assert (tmp_path / "evaluate" / "metric_results.json").is_file()
    assert (tmp_path / "prep" / "manifest.json").is_file()
    assert (tmp_path / "pretrain" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv", [
    ["-m", "egecmp_ray", "--help"],
    [str(ROOT / "jobs" / "synth.py"), "--help"],
    [str(ROOT / "jobs" / "ingest.py"), "--help"],
    [str(ROOT / "jobs" / "demo.py"), "--help"],
    [str(ROOT / "jobs" / "pretrain.py"), "--help"],
    [str(ROOT / "jobs" / "index.py"), "--help"],
    [str(ROOT / "jobs" / "evaluate.py"), "--help"],
])
def test_real_entry_points_help(argv):
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_ingest_with_images_through_the_cli(ray_session, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(images / "1.jpg")
    (images / "2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    txt = tmp_path / "product1m_gallery_x.txt"
    lines = [f"{i}#####标题{i}#####u#####u#####L{i}".encode() for i in range(1, 5)]
    lines[2] = "3#####标题3标".encode()[:-1] + b"#####u#####u#####L3"  # title cut mid-character
    txt.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli, ["ingest", "--input", str(txt), "--out", str(tmp_path / "o"),
                                      "--images", str(images), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert (m["rows_out"], m["rows_without_image"], m["rows_quarantined"]) == (3, 2, 1)
    assert m["quarantine_reasons"] == {"undecodable_image": 1}
    assert m["rows_repaired"] == 1  # line 3: kept, its cut character dropped


def test_job_script_runs_end_to_end(tmp_path):
    """The real job script in its own process: its own local Ray, as a user would run it; its
    workers' temporary files (``pymp-*`` dirs) leave nothing in TMPDIR after it exits."""
    tmp = Path(tempfile.mkdtemp(prefix="egr-tmp-"))  # short: Ray's sockets live under RAY_TMPDIR
    ray_tmp = tempfile.mkdtemp(prefix="egr-")
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "synth.py"), "--rows", "40",
                               "--out", str(tmp_path / "s"), "--preset", "tiny"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, "RAY_ADDRESS": "", "TMPDIR": str(tmp),
                                   "RAY_TMPDIR": ray_tmp})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _summary(proc.stdout, "synth:").startswith("synth: 40 rows")
        assert sorted(p.name for p in tmp.iterdir()) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_scratch_tmpdir_holds_generated_modules_and_goes_at_exit(tmp_path):
    """torch_geometric writes a module for each GCNConv class to the temp dir and never removes
    it; under the CLI's scratch TMPDIR it goes when the process does. A second call (a
    benchmark's own entry under ``egecmp bench``) keeps the first dir."""
    code = ("from egecmp_ray.runtime import use_scratch_tmpdir; import os, sys; "
            "s = use_scratch_tmpdir(); assert use_scratch_tmpdir() == s; "
            "from torch_geometric.nn import GCNConv; GCNConv(4, 4); "
            "print(s, sorted(os.listdir(s)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    scratch, made = proc.stdout.split(" ", 1)
    assert "torch_geometric" in made and Path(scratch).parent == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_job_script_bad_flag_exits_2():
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "synth.py"), "--rows", "x"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "--rows" in proc.stderr


def test_report_step_budgets_are_per_dataset_and_a_bad_one_is_a_usage_error():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from results_table import parse_steps
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert parse_steps("300") == {"synth": 300, "dev": 300}
    assert parse_steps("synth=600,dev=300") == {"synth": 600, "dev": 300}
    for bad in (["--steps", "synth=many"], ["--steps", "synth=600", "--datasets", "dev"]):
        result = subprocess.run([sys.executable, "-m", "egecmp_ray", "report", *bad],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "--steps" in result.stderr


def test_a_measured_run_can_be_pinned_with_its_children_to_given_cores():
    from egecmp_ray.benchmarking import run_measured

    cores = "import os; print(','.join(map(str, sorted(os.sched_getaffinity(0)))))"
    child = f"import subprocess, sys; {cores}; subprocess.run([sys.executable, '-c', {cores!r}])"
    first = min(os.sched_getaffinity(0))
    assert run_measured([sys.executable, "-c", child], cores={first})["output"].split() == [str(first)] * 2
    every = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert run_measured([sys.executable, "-c", child])["output"].split() == [every] * 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="needs 2 cores to tell pinned from not")
def test_a_thread_pinner_moves_the_marked_process_and_the_threads_it_starts_later_only():
    from egecmp_ray.benchmarking import ThreadPinner

    last = max(os.sched_getaffinity(0))
    # Each child starts a thread that reports its cores at 1.5 s; at 0.5 s it takes every core
    # back for its main thread (as a library setting its own affinity might), and at 1.5 s
    # reports the main thread's cores and those of a thread it starts then: the pinner's
    # re-check must have pinned the main thread again, and the new thread with it.
    code = ("import os, sys, threading, time; every = set(map(int, sys.argv[2].split(','))); "
            "out = []; "
            "report = lambda delay: (time.sleep(delay), "
            "                        out.append(sorted(os.sched_getaffinity(0)))); "
            "early = threading.Thread(target=report, args=(1.5,)); early.start(); "
            "time.sleep(0.5); os.sched_setaffinity(0, every); time.sleep(1.0); "
            "late = threading.Thread(target=report, args=(0,)); late.start(); late.join(); "
            "early.join(); print(sorted(os.sched_getaffinity(0)), *out)")
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    with ThreadPinner("pin-me-marker", {last}, every_s=0.1) as pinner:
        marked = subprocess.Popen([sys.executable, "-c", code, "pin-me-marker", cores],
                                  stdout=subprocess.PIPE, text=True)
        other = subprocess.Popen([sys.executable, "-c", code, "leave-me", cores],
                                 stdout=subprocess.PIPE, text=True)
        marked_out = marked.communicate(timeout=60)[0]
        other_out = other.communicate(timeout=60)[0]
    assert marked_out.split() == [f"[{last}]"] * 3
    every = str(sorted(os.sched_getaffinity(0))).replace(" ", "")
    assert other_out.replace(", ", ",").split() == [every] * 3
    assert {pid for pid, _ in pinner.pinned} == {marked.pid}

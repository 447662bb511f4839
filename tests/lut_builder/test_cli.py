"""The `lut-builder` command as a user runs it: build, show, plot, and bad input."""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap

import pytest

from tests.conftest import assert_user_error

from .table.common import read_only, snapshot

MODEL_PY = textwrap.dedent(
    """
    import torch.nn as nn

    def tiny():
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )
    """
)


@pytest.fixture
def model_spec(tmp_path):
    (tmp_path / "tiny.py").write_text(MODEL_PY)
    return "tiny.py:tiny"


def test_help_everywhere(lut_cli):
    top = lut_cli("--help")
    assert top.returncode == 0
    for cmd in ("build", "merge", "show", "plot"):
        assert cmd in top.stdout
        sub = lut_cli(cmd, "--help")
        assert sub.returncode == 0 and "usage: lut-builder " + cmd in sub.stdout


def test_build_show_plot_analytic(lut_cli, model_spec, tmp_path):
    args = ["--model", model_spec, "--input-shape", "1,3,16,16", "--backend", "analytic"]
    first = lut_cli("build", *args, "--step", "8", "--out", "t.lut")
    assert first.returncode == 0, first.stderr
    assert "points measured" in first.stdout and "table complete" in first.stdout
    res = lut_cli("build", *args, "--step", "8", "--out", "t.lut", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["complete"] and out["measured"] == 0 and out["planned"] > 0  # resumed
    assert out["overhead_ms"] is None  # an analytic table is never calibrated
    show = lut_cli("show", "t.lut", "--json", "--points")
    assert show.returncode == 0, show.stderr
    s = json.loads(show.stdout)
    assert s["fingerprint"]["backend"] == "analytic" and s["complete"]
    assert s["fingerprint"]["is_measurement"] is False and s["step"] == 8
    assert sum(e["measured"] for e in s["signatures"]) == s["points"] == out["planned"]
    assert all("median_ms" in p for e in s["signatures"] for p in e["points"])
    text = lut_cli("show", "t.lut")
    assert text.returncode == 0 and "not measured" in text.stdout and "conv3x3" in text.stdout
    assert {e["fill"] for e in s["signatures"]} <= {"measured", "lines", "bilinear"}
    assert "fill" in text.stdout
    plot = lut_cli("plot", "t.lut", "--out", "plots")
    assert plot.returncode == 0, plot.stderr
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == len(s["signatures"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary files left


@pytest.mark.slow
def test_build_onnxruntime_with_progress(lut_cli, model_spec, tmp_path):
    res = lut_cli(
        "build", "--model", model_spec, "--input-shape", "1,3,16,16", "--out", "t.lut",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "points measured" in res.stdout and "table complete" in res.stdout
    assert "latency model" in res.stdout and "x layers" in res.stdout
    # Checked on random-width copies (halp-trt's hook): one line, on stdout when the
    # speed-ups are within the limits, a warning on stderr when not.
    said = res.stdout + res.stderr
    assert "latency model checked on 4 random-width copies (served)" in said
    con = sqlite3.connect(tmp_path / "t.lut")
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    assert json.loads(meta["complete"]) is True
    assert json.loads(meta["fingerprint"])["backend"] == "onnxruntime"
    assert json.loads(meta["overhead_ms"]) is not None
    # Calibrated on the model and its 3/4- and 1/2-width copies (affine by default).
    points = json.loads(meta["overhead"])["points"]
    assert len(points) == 3 and points[0]["layers_ms"] > points[2]["layers_ms"]
    assert json.loads(meta["overhead"])["check"]["copies"] == 4
    # Timed as models are served (the default --calibration-timing).
    assert json.loads(meta["overhead"])["regime"] == "served"
    assert json.loads(meta["overhead"])["check"]["regime"] == "served"
    show = lut_cli("show", "t.lut")
    assert show.returncode == 0 and "random-width copies" in show.stdout
    assert json.loads(meta["scale"]) > 0
    # How its points were timed: the backend's loop, recorded by the build, shown.
    loops = json.loads(meta["info"])["timing_loops"]
    assert [{k: v for k, v in e.items() if k != "worker"} for e in loops] == [
        {"warmup": 5, "runs": 20, "min_time_s": 0.3}
    ]
    assert "each point timed with warmup 5, runs 20, min_time_s 0.3" in show.stdout


# Each case starts a Python process that imports torch (seconds on 2 shared cores): the
# issue's four cases run by default, the rest with the slow tests.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--backend", "nope"], ["unknown backend 'nope'", "onnxruntime"]),
        (["--backend", "tensorrt"], ["TensorRT"]),
        (["--backend", "torch", "--device", "cuda"], ["CUDA"]),
        (["--input-shape", "1,5,16,16"], ["does not accept an input of shape"]),
        pytest.param(["--precision", "fp16", "--backend", "onnxruntime"], ["fp32"], marks=SLOW),
        pytest.param(["--input-shape", "1,3,abc,16"], ["input shape"], marks=SLOW),
        pytest.param(["--shard", "3/2"], ["--shard"], marks=SLOW),
        pytest.param(["--step", "0"], ["--step"], marks=SLOW),
        pytest.param(["--model", "nowhere.py:f"], ["does not exist"], marks=SLOW),
    ],
)
def test_build_bad_input_one_line_no_table(lut_cli, model_spec, tmp_path, args, fragments):
    base = {"--model": model_spec, "--input-shape": "1,3,16,16", "--backend": "analytic"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [v for kv in base.items() for v in kv]
    res = lut_cli("build", *flat, "--out", "t.lut")
    if "tensorrt" in args and res.returncode == 0:
        pytest.skip("TensorRT is installed")
    assert_user_error(res, *fragments)
    assert not (tmp_path / "t.lut").exists()


def test_show_and_plot_reject_bad_files(lut_cli, tmp_path):
    (tmp_path / "junk.lut").write_bytes(b"\x00\x01 not sqlite" * 50)
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    for cmd in (["show"], ["plot", "--out", "p"]):
        assert_user_error(lut_cli(*cmd[:1], "junk.lut", *cmd[1:]), "not an SQLite database")
        assert_user_error(lut_cli(*cmd[:1], "other.db", *cmd[1:]), "schema")
        assert_user_error(lut_cli(*cmd[:1], "missing.lut", *cmd[1:]), "does not exist")


@pytest.fixture
def table(tmp_path, model_spec):
    """A complete analytic table of tiny.py at 1x3x16x16, step 8, built in-process."""
    import torch

    from lut_builder.build import build_table
    from lut_builder.specs import load_model

    model = load_model(str(tmp_path / model_spec))
    build_table(tmp_path / "t.lut", model, torch.randn(1, 3, 16, 16), "analytic", step=8)
    return tmp_path / "t.lut"


OTHER_PY = textwrap.dedent(
    """
    import torch.nn as nn

    def other():  # a 1x1 signature tiny has not, then tiny's 3x3 at other widths
        return nn.Sequential(nn.Conv2d(3, 24, 1), nn.Conv2d(24, 40, 3, padding=1))
    """
)


def test_build_of_another_model_into_a_table_changes_nothing(lut_cli, table, tmp_path):
    from lut_builder.table import LatencyTable

    (tmp_path / "other.py").write_text(OTHER_PY)
    before = snapshot(tmp_path)
    res = lut_cli(
        "build", "--model", "other.py:other", "--input-shape", "1,3,16,16",
        "--backend", "analytic", "--step", "8", "--out", "t.lut",
    )  # fmt: skip
    assert_user_error(res, "t.lut holds the plan of another model", "another grid")
    assert snapshot(tmp_path) == before
    with LatencyTable.open(table) as t:  # still complete: prune can use it
        assert t.complete


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["build", "--out", "adir"], ["--out 'adir' is a directory"]),
        (["build", "--out", "missing/t.lut"], ["the directory of --out 'missing/t.lut'"]),
        (["build", "--threads", "0", "--out", "t.lut"], ["--threads", "'0'"]),
        (["build", "--threads", "100000", "--out", "t.lut"], ["--threads: must be at most"]),
        (["build", "--check", "-1", "--out", "t.lut"], ["--check", "'-1'"]),
        pytest.param(
            ["build", "--calibration-timing", "alone", "--out", "t.lut"],
            ["--calibration-timing", "'alone'"],
            marks=pytest.mark.slow,
        ),
        (["plot", "nosuch.lut", "--out", "tiny.py/p"], ["the parent of --out 'tiny.py/p'"]),
        (["show", "adir"], ["latency table 'adir' is a directory"]),
    ],
)
def test_bad_paths_and_numbers_fail_first_and_write_nothing(
    lut_cli, model_spec, tmp_path, args, fragments
):
    (tmp_path / "adir").mkdir()
    if args[0] == "build":
        args = [args[0], "--model", model_spec, "--input-shape", "1,3,16,16",
                "--backend", "analytic", *args[1:]]  # fmt: skip
    before = snapshot(tmp_path)
    assert_user_error(lut_cli(*args), *fragments)
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["adir", "tiny.py"]


def test_threads_up_to_the_cpu_count(monkeypatch):
    """--threads takes every count from 1 to the CPUs this process may use, and no more."""
    import argparse

    from lut_builder import parallelism
    from lut_builder.cli_args import thread_count

    monkeypatch.setattr(parallelism, "usable_cpus", lambda: 2)
    assert [thread_count("1"), thread_count("2")] == [1, 2]
    for text, words in (("3", "at most 2, the CPUs this process may use, not 3"),
                        ("0", "0"), ("two", "two")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            thread_count(text)


def test_show_reads_a_table_in_a_read_only_directory(lut_cli, table, tmp_path):
    (tmp_path / "ro").mkdir()
    table.rename(tmp_path / "ro" / "t.lut")
    with read_only(tmp_path / "ro"):
        res = lut_cli("show", "ro/t.lut", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["complete"]


def test_damaged_table_one_line_naming_it_and_nothing_written(lut_cli, table, tmp_path):
    con = sqlite3.connect(table)
    con.execute("UPDATE points SET median_ms = 'abc'")
    con.commit()
    con.close()
    before = snapshot(tmp_path)
    for args in (["show", "t.lut"], ["plot", "t.lut", "--out", "plots"]):
        assert_user_error(lut_cli(*args), "latency table t.lut is damaged", "latency 'abc'")
    assert snapshot(tmp_path) == before and not (tmp_path / "plots").exists()


# --- merge ------------------------------------------------------------------------------


def build_shards(tmp_path, model_spec, names, batch=1):
    """Analytic shards of one build, each in its own file (as on separate machines),
    built in-process (a CLI run each would cost seconds)."""
    import torch

    from lut_builder.build import build_table
    from lut_builder.specs import load_model

    model = load_model(str(tmp_path / model_spec))
    for i, name in enumerate(names):
        if name is not None:
            x = torch.randn(batch, 3, 16, 16)
            build_table(tmp_path / name, model, x, "analytic", step=8, shard=(i, len(names)))


@pytest.fixture
def shard_files(model_spec, tmp_path):
    build_shards(tmp_path, model_spec, ["s0.lut", "s1.lut"])
    return ["s0.lut", "s1.lut"]


def test_merge_shards_then_show(lut_cli, shard_files, tmp_path):
    res = lut_cli("merge", *shard_files, "--out", "m.lut", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["complete"] and out["missing"] == 0 and out["inputs"] == shard_files
    show = json.loads(lut_cli("show", "m.lut", "--json").stdout)
    assert show["complete"] and show["points"] == out["points"] > 0
    text = lut_cli("merge", *shard_files, "--out", "m2.lut")
    assert text.returncode == 0 and "2 tables merged" in text.stdout and "complete" in text.stdout
    # repeated builds (here: the merged table and a shard of it) are averaged, not refused
    avg = lut_cli("merge", "m.lut", shard_files[0], "--average", "--out", "m3.lut")
    assert avg.returncode == 0, avg.stderr
    assert "measured in more than one (averaged; 0 beyond their spread)" in avg.stdout


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["latency table 'nope.lut' does not exist"]),
        ("exists", ["--out 'm.lut' exists"]),
        ("fingerprint", ["measured on another target", "batch: 1 vs 2"]),
        ("conflict", ["conflicts", "s0.lut", "s1.lut"]),
    ],
)
def test_merge_refusals_one_line_nothing_written(
    lut_cli, shard_files, model_spec, tmp_path, case, fragments
):
    inputs = list(shard_files)
    if case == "missing":
        inputs.append("nope.lut")
    elif case == "exists":
        (tmp_path / "m.lut").write_text("a file the user keeps")
    elif case == "fingerprint":
        build_shards(tmp_path, model_spec, [None, "b2.lut"], batch=2)
        inputs[1] = "b2.lut"
    else:  # the same point measured by both, far apart
        con = sqlite3.connect(tmp_path / "s0.lut")
        row = con.execute("SELECT * FROM points LIMIT 1").fetchone()
        con.close()
        con = sqlite3.connect(tmp_path / "s1.lut")
        con.execute(
            "INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row[:3], row[3] * 2, row[4] * 2, row[5] * 2, *row[6:]),
        )
        con.commit()
        con.close()
    before = snapshot(tmp_path)
    assert_user_error(lut_cli("merge", *inputs, "--out", "m.lut"), *fragments)
    assert snapshot(tmp_path) == before


def test_ctrl_c_caught_by_a_library_on_the_way_still_exits_130(capsys):
    """A library that swallows the KeyboardInterrupt (and goes on) cannot hide Ctrl-C."""
    import os
    import signal
    import time

    from lut_builder.errors import UserError, interrupted, run_cli

    def swallowing():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except BaseException:  # what a careless library does
            pass
        return 0

    def wrapping():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except BaseException as exc:
            raise UserError("export failed") from exc

    before = signal.getsignal(signal.SIGINT)
    for func in (swallowing, wrapping):
        assert run_cli(func, prog="lut-builder") == 130
        assert capsys.readouterr().err == "lut-builder: interrupted\n"
        assert interrupted() and signal.getsignal(signal.SIGINT) is before
    assert run_cli(lambda: 0, prog="lut-builder") == 0 and not interrupted()


def test_own_user_warnings_are_one_line_and_others_keep_python_format(capsys):
    import warnings

    from lut_builder.errors import run_cli

    def command():
        # As if raised in the packages' own code, and in a library's.
        warnings.warn_explicit("plan too noisy", UserWarning, "/x/halp_trt/prune/pruner.py", 9)
        warnings.warn_explicit("old API", UserWarning, "/x/site-packages/torch/onnx.py", 7)
        return 0

    with warnings.catch_warnings(record=True) as handed_on:  # Python's default handler
        warnings.simplefilter("always")
        assert run_cli(command, prog="halp-trt") == 0
    assert capsys.readouterr().err.splitlines() == ["halp-trt: warning: plan too noisy"]
    assert [(str(w.message), w.filename) for w in handed_on] == [
        ("old API", "/x/site-packages/torch/onnx.py")
    ]

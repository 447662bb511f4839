"""bench/gpu_suite.sh without a GPU: its parts run on the torch CPU backend with a small
model, so a renamed flag or a broken step shows here before a GPU machine runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_parts_run_on_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "PRECISION": "fp32",
        "MODELS": "halp_trt.models:resnet20",
        "CLASSIFIERS": "halp_trt.models:resnet20",
        "SIZE": "32",
        "BATCH": "2",
        "TARGET": "0.95x",
        "RESULTS": str(tmp_path / "results"),
        "WORK": str(tmp_path / "work"),
    }

    def part(name: str) -> None:
        res = subprocess.run(
            ["bash", str(ROOT / "bench/gpu_suite.sh"), name],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]

    results = tmp_path / "results"
    slug = "halp_trt_models_resnet20"
    part("tables")
    build = json.loads((results / f"lut_build_{slug}_b2.json").read_text())
    assert build["complete"] and build["planned"] == build["measured"] > 0
    assert json.loads((results / "device_tables.json").read_text())["cuda"] is None
    part("fidelity")
    fid = json.loads((results / f"lut_fidelity_{slug}_b2.json").read_text())
    assert fid["device"] == "cpu" and fid["precision"] == "fp32" and len(fid["rows"]) > 20
    part("prune")
    assert not (results / f"prune_{slug}.err").exists()
    plan = json.loads((results / f"plan_{slug}.json").read_text())
    assert plan["predicted_ms"] <= plan["budget_ms"]
    verify = json.loads((results / f"verify_{slug}_b2.json").read_text())
    assert verify["speedup"]["median"] > 0
    part("inspect")
    rows = json.loads((results / "inspect_torchvision.json").read_text())
    assert rows[0]["rc"] == 0 and rows[0]["check"]["passed"]


def suite_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "DEVICE": "cpu",
        "PRECISION": "fp32", "MODELS": "halp_trt.models:resnet20", "SIZE": "32", "BATCH": "2",
        "RESULTS": str(tmp_path / "results"), "WORK": str(tmp_path / "work"), **extra,
    }  # fmt: skip


def slow_net():
    """A model spec whose loading outlasts any lease in these tests, on any machine: the
    lease test's table step must be cut at the deadline, not finish before it."""
    time.sleep(600)
    raise AssertionError("slow_net was not stopped at its deadline")


def test_lease_stops_each_step_at_its_deadline(tmp_path):
    # A loan of a GPU is minutes: every step of the lease part runs under the deadline,
    # one cut short is logged with its exit code and the next starts; the part ends well.
    # 12 s in all, verify_cuda.py at most 3 of them (under the 5 s a step needs: refused):
    # the first model's table (its spec loads for 10 minutes) is killed at the deadline,
    # its fidelity and pruning never start, and the second model's table is refused.
    slow = f"{ROOT / 'tests/test_gpu_suite.py'}:slow_net"
    start = time.monotonic()
    res = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_suite.sh"), "lease"],
        env=suite_env(tmp_path, BUDGET_S="12", VERIFY_S="3", MODELS=f"{slow} halp_trt.models:resnet20"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert res.returncode == 0, res.stderr[-2000:]
    assert "verify_cuda.py: exit 124" in res.stderr, res.stderr[-2000:]
    assert f"table of {slow}: exit 124" in res.stderr, res.stderr[-2000:]
    assert "no time left for" in res.stderr.split(f"table of {slow}: exit 124")[1]
    assert "table of halp_trt.models:resnet20: exit 124" in res.stderr, res.stderr[-2000:]
    assert "fidelity of" not in res.stderr and "prune failed" not in res.stderr
    assert not list((tmp_path / "results").glob("lut_fidelity_*"))
    assert "== done" in res.stderr
    # The 12 s budget, the 5 s grace of `timeout -k` and the device probe's start-up: far
    # from the 600 s the slow spec would take.
    assert elapsed < 60, elapsed


def test_unknown_part_is_one_line_before_anything_is_written(tmp_path):
    res = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_suite.sh"), "tabels"],
        env=suite_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "unknown part tabels" in res.stderr and not (tmp_path / "results").exists()


def test_pareto_part_runs_the_bench_in_the_torch_deployment(tmp_path):
    # The pareto part's flags reach bench/pareto.py: a tiny model on the torch CPU backend,
    # one seed, target and method (16 s here); the result says where it was timed.
    model = f"{ROOT / 'tests/test_bench_pareto.py'}:tiny_net"
    env = suite_env(
        tmp_path, PMODEL=model, PSIZE="16", PBATCH="4", PPRETRAIN="0", PEPOCHS="1",
        PTARGETS="0.8x", PSEEDS="0", PMETHODS="uniform", DATA="digits", PSTEP="8",
    )  # fmt: skip
    res = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_suite.sh"), "pareto"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0 and "pareto.py: exit" not in res.stderr, res.stderr[-2000:]
    (out,) = (tmp_path / "results").glob("pareto_*_b4_16_cpu.json")
    result = json.loads(out.read_text())
    assert result["status"] == "complete" and result["targets"] == ["0.8x"]
    settings = result["settings"]
    assert (settings["backend"], settings["device"], settings["precision"]) == (
        "torch", "cpu", "fp32",
    )  # fmt: skip
    assert result["table"]["fingerprint"]["backend"] == "torch"
    assert {r["method"] for r in result["runs"]} >= {"uniform"}

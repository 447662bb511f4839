"""The fault matrix: bad input and faults against the real command lines.

Every case runs ``halp-trt`` or ``lut-builder`` in a process of its own (forked from a
server that has imported torch once, ``tests/warm_cli.py``) in one shared
workspace (a model file, a saved model, an ONNX file, a complete table, a run report)
and asserts what the README promises for every failure a user can cause: exit code 2
(130 for an interrupt), exactly one line on stderr, no traceback, and every file of
the workspace byte-identical afterwards, with nothing created or left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .warm_cli import WarmRunner

MODEL_PY = textwrap.dedent(
    """
    import torch.nn as nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.bn1(self.conv1(x)).relu()
            x = self.bn2(self.conv2(x)).relu()
            return self.fc(self.pool(x).flatten(1))

    def small():
        return Small()
    """
)
SHAPE = "1,1,8,8"


def run_cli(
    runner: WarmRunner, tool: str, *args: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # imports of small.py write nothing
    return runner.run(tool, args, cwd, timeout, env=env)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under ``root``: content hash (or "dir") and mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        digest = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        out[rel] = (digest, p.stat().st_mode)
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory with everything the cases point at, built once."""
    import torch

    from lut_builder import build_table
    from lut_builder.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("faults")
    (root / "small.py").write_text(MODEL_PY)
    (root / "exiting.py").write_text("import sys\nsys.exit(3)\n\ndef model():\n    pass\n")
    sys.path.insert(0, str(root))
    try:
        import small

        model = small.small().eval()
        x = torch.randn(1, 1, 8, 8)
        torch.save(model, root / "small.pt")
        export_onnx(model, x, root / "small.onnx")
        info = {"model": "small.py:small", "input_shape": [1, 1, 8, 8]}
        build_table(root / "small.db", model, x, "analytic", step=4, info=info)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("small", None)
    for side in ("small.db-wal", "small.db-shm"):
        (root / side).unlink(missing_ok=True)
    shutil.copy(root / "small.db", root / "damaged.db")
    with sqlite3.connect(root / "damaged.db") as con:
        first = "(SELECT sig_id, c_in, c_out FROM points ORDER BY 1, 2, 3 LIMIT 1)"
        con.execute(f"UPDATE points SET median_ms = 'abc' WHERE (sig_id, c_in, c_out) = {first}")
    con.close()
    (root / "other.py").write_text(MODEL_PY.replace("16", "24"))
    (root / "notatable.db").write_text("these are not the latencies you are looking for\n")
    (root / "empty.db").write_text("")
    (root / "afile").write_text("a file\n")
    (root / "adir").mkdir()
    _save_module_of_a_lost_class(root / "lost.pt", tmp_path_factory.mktemp("lost"))
    # Run directories whose report files are of the wrong kind: report.json a
    # directory; plots a file; report.md a directory.
    (root / "jsondir" / "report.json").mkdir(parents=True)
    for name in ("plotsfile", "mddir"):
        (root / name).mkdir()
        (root / name / "report.json").write_text(json.dumps({"baseline": {}}))
    (root / "plotsfile" / "plots").write_text("not a directory\n")
    (root / "mddir" / "report.md").mkdir()
    bad = root / "badreport"
    bad.mkdir()
    (bad / "report.json").write_text(json.dumps({"baseline": 3, "groups": 5, "steps": "x"}))
    return root


def _save_module_of_a_lost_class(path: Path, where: Path) -> None:
    """``torch.save`` of a whole module whose class lives in a module no one can import
    afterwards (as a pruned model saved whole and taken to another machine)."""
    import torch

    (where / "lost_model.py").write_text(MODEL_PY)
    sys.path.insert(0, str(where))
    try:
        import lost_model

        torch.save(lost_model.small(), path)
    finally:
        sys.path.remove(str(where))
        sys.modules.pop("lost_model", None)


PRUNE = ["prune", "--model", "small.py:small", "--data", "digits", "--lut", "small.db",
         "--target", "0.9x", "--epochs", "1", "--steps", "2", "--no-progress"]  # fmt: skip
RUN = ["run", "--model", "small.py:small", "--data", "digits", "--input-shape", SHAPE,
       "--target", "0.9x", "--epochs", "1", "--steps", "2", "--no-progress"]  # fmt: skip
VERIFY = ["verify", "--original", "small.pt", "--pruned", "small.pt", "--input-shape", SHAPE,
          "--rounds", "3"]  # fmt: skip
EXPORT = ["export", "--model", "small.py:small", "--input-shape", SHAPE]

#: (id, tool, arguments, what the one line must say)
CASES = [
    # output paths, checked before any work
    ("prune-out-unwritable", "halp_trt", [*PRUNE, "--out", "/proc/halp-out"], "cannot be written"),
    ("prune-out-is-a-file", "halp_trt", [*PRUNE, "--out", "afile"], "exists and is not a directory"),
    ("prune-out-no-parent", "halp_trt", [*PRUNE, "--out", "nowhere/out"], "does not exist"),
    ("verify-out-is-a-dir", "halp_trt", [*VERIFY, "--backend", "torch", "--out", "adir"], "is a directory"),
    ("export-out-no-parent", "halp_trt", [*EXPORT, "--out", "nowhere/m.onnx"], "does not exist"),
    ("export-out-is-a-dir", "halp_trt", [*EXPORT, "--out", "adir"], "is a directory"),
    ("engine-out-is-a-dir", "halp_trt", ["engine", "--onnx", "small.onnx", "--out", "adir"], "is a directory"),
    ("run-out-is-a-file", "halp_trt", [*RUN, "--out", "afile"], "exists and is not a directory"),
    ("run-out-unwritable", "halp_trt", [*RUN, "--out", "/proc/halp-run"], "cannot be written"),
    ("run-out-not-empty", "halp_trt", [*RUN, "--out", "badreport"], "not an empty directory"),
    ("report-dir-is-a-file", "halp_trt", ["report", "afile"], "exists and is not a directory"),
    ("report-dir-empty", "halp_trt", ["report", ""], "DIR must be a non-empty string"),
    # an output is never one of the inputs, an earlier result, nor a directory's name
    ("export-out-is-the-model-file", "halp_trt", [*EXPORT, "--out", "small.py"], "is one of the inputs (--model)"),
    ("export-out-is-the-saved-model", "halp_trt", ["export", "--model", "small.pt", "--input-shape", SHAPE, "--out", "./small.pt"], "is one of the inputs (--model)"),
    ("export-out-ends-in-a-separator", "halp_trt", [*EXPORT, "--out", "new/"], "ends in a separator"),
    ("export-out-empty", "halp_trt", [*EXPORT, "--out", ""], "--out must be a non-empty string"),
    ("engine-out-is-its-onnx", "halp_trt", ["engine", "--onnx", "small.onnx", "--out", "small.onnx"], "is one of the inputs (--onnx)"),
    ("engine-out-is-its-new-timing-cache", "halp_trt", ["engine", "--onnx", "small.onnx", "--out", "new.engine", "--timing-cache", "new.engine"], "is one of the inputs (--timing-cache)"),
    ("engine-sidecar-is-its-new-timing-cache", "halp_trt", ["engine", "--onnx", "small.onnx", "--out", "new.engine", "--timing-cache", "new.engine.json"], "sidecar) 'new.engine.json' is one of the inputs (--timing-cache)"),
    ("verify-out-is-a-model", "halp_trt", [*VERIFY, "--backend", "torch", "--out", "small.pt"], "is one of the inputs (--original)"),
    ("verify-out-is-a-recorded-sidecar", "halp_trt", ["verify", "--original", "new.engine", "--pruned", "other.engine", "--backend", "tensorrt", "--record", "--out", "new.engine.json"], "is one of the inputs (--original's sidecar, --record)"),
    ("verify-out-empty", "halp_trt", [*VERIFY, "--backend", "torch", "--out", ""], "--out must be a non-empty string"),
    ("prune-out-not-empty", "halp_trt", [*PRUNE, "--out", "badreport"], "not an empty directory"),
    ("prune-out-cwd", "halp_trt", [*PRUNE, "--out", "."], "not an empty directory"),
    ("prune-out-empty", "halp_trt", [*PRUNE, "--out", ""], "--out must be a non-empty string"),
    ("build-out-is-the-model-file", "lut_builder", ["build", "--model", "small.py:small", "--input-shape", SHAPE, "--backend", "analytic", "--out", "small.py"], "is one of the inputs (--model)"),
    # a backend that cannot run here: refused before the run directory exists
    ("run-backend-tensorrt", "halp_trt", [*RUN, "--backend", "tensorrt", "--out", "new"], "TensorRT"),
    ("run-backend-precision", "halp_trt", [*RUN, "--backend", "onnxruntime", "--precision", "fp16", "--out", "new"], "fp32"),
    # silent substitutions and dumps
    ("export-opset-3", "halp_trt", [*EXPORT, "--opset", "3", "--out", "m.onnx"], "--opset must be in 7-23"),
    ("report-wrong-types", "halp_trt", ["report", "badreport"], "cannot be rendered"),
    ("model-file-exits", "halp_trt", ["inspect", "--model", "exiting.py:model", "--input-shape", SHAPE], "sys.exit(3)"),
    # messages that name what the user gave
    ("verify-threads-0", "halp_trt", [*VERIFY, "--backend", "torch", "--threads", "0"], "--threads: must be an integer >= 1"),
    ("run-lut-is-a-dir", "halp_trt", [*RUN, "--lut", "adir", "--out", "new"], "is a directory"),
    ("run-lut-not-a-table", "halp_trt", [*RUN, "--lut", "notatable.db", "--out", "new"], "notatable.db is not a latency table"),
    ("run-lut-empty-file", "halp_trt", [*RUN, "--lut", "empty.db", "--out", "new"], "empty.db is not a latency table"),
    ("prune-steps-0", "halp_trt", [*PRUNE, "--steps", "0", "--out", "new"], "--steps must be an integer >= 1, not 0"),
    ("run-epochs-0", "halp_trt", [*RUN, "--epochs", "0", "--out", "new"], "--epochs must be at least 1"),
    ("usage-is-one-line", "halp_trt", ["prune", "--model", "small.py:small"], "required"),
    # the kinds that passed before: specs, shapes, targets, tables, data
    ("bad-spec", "halp_trt", ["inspect", "--model", "nope:model", "--input-shape", SHAPE], "nope"),
    ("bad-shape", "halp_trt", ["inspect", "--model", "small.py:small", "--input-shape", "1,3,8,8"], "does not accept"),
    ("bad-target", "halp_trt", [*PRUNE, "--target", "soon", "--out", "new"], "--target must be like 0.5x"),
    ("infeasible-target", "halp_trt", [*PRUNE, "--target", "0.01x", "--out", "new"], "infeasible"),
    ("run-target-above-1x", "halp_trt", [*RUN, "--target", "1.5x", "--out", "new"], "--target must be below 1x"),
    ("not-a-table", "halp_trt", [*PRUNE, "--lut", "notatable.db", "--out", "new"], "notatable.db"),
    ("missing-data", "halp_trt", [*PRUNE, "--data", "npz:missing.npz", "--out", "new"], "missing.npz"),
    ("show-not-a-table", "lut_builder", ["show", "notatable.db"], "notatable.db"),
    # tables: damaged values are named; a build that does not fit changes nothing
    ("prune-damaged-table", "halp_trt", [*PRUNE[:6], "damaged.db", *PRUNE[7:], "--out", "new"], "damaged"),
    ("show-damaged-table", "lut_builder", ["show", "damaged.db"], "'abc'"),
    ("prune-lut-is-a-dir", "halp_trt", [*PRUNE[:6], "adir", *PRUNE[7:], "--out", "new"], "is a directory"),
    ("build-another-model-into-a-table", "lut_builder", ["build", "--model", "other.py:small", "--input-shape", SHAPE, "--backend", "analytic", "--step", "4", "--out", "small.db"], "small.db"),
    ("build-out-is-a-dir", "lut_builder", ["build", "--model", "small.py:small", "--input-shape", SHAPE, "--backend", "analytic", "--out", "adir"], "is a directory"),
    # more threads than CPUs: refused before anything runs (a huge count crashed or hung)
    ("verify-threads-huge", "halp_trt", [*VERIFY, "--backend", "torch", "--threads", "100000"], "--threads: must be at most"),
    ("verify-ort-threads-huge", "halp_trt", ["verify", "--original", "small.onnx", "--pruned", "small.onnx", "--backend", "onnxruntime", "--threads", "100000"], "the CPUs this process may use"),
    ("run-threads-huge", "halp_trt", [*RUN, "--threads", "100000", "--out", "new"], "--threads: must be at most"),
    ("build-threads-huge", "lut_builder", ["build", "--model", "small.py:small", "--input-shape", SHAPE, "--backend", "onnxruntime", "--threads", "100000", "--out", "new.db"], "--threads: must be at most"),
    # numbers outside what the flag allows
    ("inspect-seed-negative", "halp_trt", ["inspect", "--model", "small.py:small", "--input-shape", SHAPE, "--check", "--seed", "-1"], "--seed: must be an integer >= 0"),
    ("export-seed-negative", "halp_trt", [*EXPORT, "--seed=-1", "--out", "m.onnx"], "--seed: must be an integer >= 0"),
    ("export-seed-huge", "halp_trt", [*EXPORT, "--seed", str(2**64), "--out", "m.onnx"], "--seed: must be an integer from 0 to"),
    ("prune-seed-huge", "halp_trt", [*PRUNE, "--seed", str(2**64)], "seed must be an integer from 0 to"),
    ("verify-block-ms-inf", "halp_trt", [*VERIFY, "--backend", "torch", "--block-ms", "inf"], "--block-ms: must be a finite number > 0"),
    ("verify-chunk-ms-inf", "halp_trt", [*VERIFY, "--backend", "torch", "--chunk-ms", "inf"], "--chunk-ms: must be a finite number > 0"),
    ("verify-ort-precision", "halp_trt", ["verify", "--original", "small.onnx", "--pruned", "small.onnx", "--backend", "onnxruntime", "--precision", "fp16"], "--precision fp16 does not apply to --backend onnxruntime"),
    ("verify-ort-device", "halp_trt", ["verify", "--original", "small.onnx", "--pruned", "small.onnx", "--backend", "onnxruntime", "--device", "cuda"], "--device cuda does not apply to --backend onnxruntime"),
    ("verify-ort-channels-last", "halp_trt", ["verify", "--original", "small.onnx", "--pruned", "small.onnx", "--backend", "onnxruntime", "--channels-last"], "--channels-last does not apply to --backend onnxruntime"),
    ("inspect-shape-too-large", "halp_trt", ["inspect", "--model", "small.py:small", "--input-shape", "1,1,10000000,10000000"], "cannot be allocated"),
    ("export-shape-too-large", "halp_trt", ["export", "--model", "small.py:small", "--input-shape", "1,1,10000000,10000000", "--out", "m.onnx"], "cannot be allocated"),
    # a report's files of the wrong kind: nothing is drawn or half-written
    ("report-json-is-a-dir", "halp_trt", ["report", "jsondir"], "report.json is a directory"),
    ("report-plots-is-a-file", "halp_trt", ["report", "plotsfile"], "plots exists and is not a directory"),
    ("report-md-is-a-dir", "halp_trt", ["report", "mddir"], "report.md is a directory"),
    # one table given twice is not two agreeing tables
    ("merge-same-table-twice", "lut_builder", ["merge", "small.db", "small.db", "--out", "m.db"], "'small.db' is given twice"),
    ("merge-average-same-file", "lut_builder", ["merge", "small.db", "adir/../small.db", "--average", "--out", "m.db"], "are the same file"),
    # a directory where a file is read is named as one
    ("inspect-weights-is-a-dir", "halp_trt", ["inspect", "--model", "small.py:small", "--input-shape", SHAPE, "--weights", "adir"], "weights file 'adir' is a directory, not a state_dict file"),
    ("prune-npz-is-a-dir", "halp_trt", [*PRUNE, "--data", "npz:adir", "--out", "new"], "data file 'adir' is a directory"),
    ("engine-onnx-is-a-dir", "halp_trt", ["engine", "--onnx", "adir", "--out", "m.engine"], "ONNX file 'adir' is a directory"),
    ("weights-module-of-a-lost-class", "halp_trt", ["inspect", "--model", "small.py:small", "--input-shape", SHAPE, "--weights", "lost.pt"], "hold a whole module (lost_model.Small) saved with torch.save(model), not a state_dict, and its class cannot be imported here: ModuleNotFoundError"),
]  # fmt: skip


@pytest.mark.parametrize("tool,args,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fault_is_one_line_exit_2_and_changes_nothing(cli_runner, workspace, tool, args, fragment):
    before = snapshot(workspace)
    result = run_cli(cli_runner, tool, *args, cwd=workspace)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and "error:" in lines[0], result.stderr[-2000:]
    assert fragment in lines[0], (fragment, lines[0])
    assert "\x1b" not in result.stderr, "raw terminal escapes in the message"
    assert snapshot(workspace) == before, "a failing command changed or left files"


def test_an_output_that_is_not_a_regular_file_is_left_alone(cli_runner, workspace, tmp_path):
    """A FIFO (or a device) named as the output is refused, not replaced by a file."""
    fifo = tmp_path / "p.onnx"
    os.mkfifo(fifo)
    result = run_cli(cli_runner, "halp_trt", *EXPORT, "--out", fifo, cwd=workspace)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "exists and is not a regular file" in result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and os.listdir(tmp_path) == ["p.onnx"]


def test_an_output_that_cannot_be_replaced_is_one_line(cli_runner, workspace, tmp_path):
    """An immutable output file: the export's work is done, its rename fails; one line,
    exit code 2, the file as it was and no temporary file left."""
    target = tmp_path / "ro.onnx"
    target.write_bytes(b"old")
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", target], capture_output=True).returncode:
        pytest.skip("needs chattr +i (root, a file system with attributes)")
    try:
        args = [*EXPORT, "--no-parity", "--out", target]
        result = run_cli(cli_runner, "halp_trt", *args, cwd=workspace)
    finally:
        subprocess.run([chattr, "-i", target], check=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert "cannot be written: Operation not permitted" in result.stderr
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["ro.onnx"]


def test_a_second_run_on_a_locked_directory_stops(cli_runner, workspace, tmp_path):
    """A run directory is locked while a run works in it: another run stops at once."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"args": {}, "stages": {}, "backend": "onnxruntime"}))
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running halp-trt run holds
        (held_pid := out / ".lock").write_text("pid 12345")
        before = snapshot(out)
        result = run_cli(cli_runner, "halp_trt", *RUN, "--out", out, "--resume", cwd=workspace)
        after = snapshot(out)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "in use by another halp-trt run" in result.stderr
    assert "pid 12345" in result.stderr and held_pid.exists()
    assert after == before


def test_interrupted_build_exits_130_in_one_line_and_resumes(cli_runner, workspace, tmp_path):
    """Ctrl-C during a measurement: exit 130, one line; the table keeps what it had and
    a second build finishes it."""
    shutil.copy(workspace / "small.py", tmp_path / "small.py")
    args = ["build", "--model", "small.py:small", "--input-shape", "4,1,16,16",
            "--backend", "onnxruntime", "--step", "8", "--out", "t.db"]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lut_builder", *args], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        db = tmp_path / "t.db"
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    if con.execute("select count(*) from points").fetchone()[0] >= 2:
                        break
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.2)
    assert proc.poll() is None, "the build finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [
        ln for ln in err.replace("\r", "\n").splitlines() if "interrupted" in ln or "error" in ln
    ]
    assert proc.returncode == 130, err[-2000:]
    assert lines == ["lut-builder: interrupted"] and "Traceback" not in err
    again = run_cli(cli_runner, "lut_builder", *args, "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout)
    assert done["complete"] and 0 < done["measured"] < done["planned"]

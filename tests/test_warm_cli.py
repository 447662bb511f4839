"""The command server of the command-line tests runs a module as ``python -m`` does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import os, sys
    import torch
    print("argv", sys.argv)
    print("cwd", os.getcwd())
    print("path0", sys.path[0])
    print("env", os.environ.get("PROBE_VALUE"))
    print("bytecode", sys.dont_write_bytecode)
    print("threads", torch.get_num_threads())
    print("to stderr", file=sys.stderr)
    if sys.argv[1:] == ["sleep"]:
        import time
        time.sleep(60)
    raise SystemExit(int(sys.argv[1]) if sys.argv[1:] else 0)
    """
)


def test_a_command_sees_what_a_fresh_interpreter_sees(cli_runner, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    env = {**os.environ, "PROBE_VALUE": "seen", "PYTHONDONTWRITEBYTECODE": "1"}
    for args in ([], ["3"]):
        warm = cli_runner.run("probe", args, tmp_path, 60, env=env)
        cold = subprocess.run([sys.executable, "-m", "probe", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert (warm.returncode, warm.stdout, warm.stderr) == (
            cold.returncode, cold.stdout, cold.stderr,
        )  # fmt: skip
    assert "env seen" in warm.stdout and "bytecode True" in warm.stdout
    assert warm.returncode == 3 and warm.stderr == "to stderr\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.py"]


def test_a_command_past_its_timeout_is_killed(cli_runner, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    with pytest.raises(subprocess.TimeoutExpired):
        cli_runner.run("probe", ["sleep"], tmp_path, 2)
    after = cli_runner.run("probe", ["4"], tmp_path, 60)  # the server serves on
    assert after.returncode == 4

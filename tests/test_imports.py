"""Every module imports and every command's --help works with no GPU and no TensorRT."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"tensorrt", "tensorrt_bindings", "pycuda", "cuda"}:
                raise ImportError(f"{name} is blocked for this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_every_module_imports_without_gpu_or_tensorrt():
    code = textwrap.dedent(
        """
        import importlib, pkgutil
        import halp_trt, lut_builder
        names = []
        for pkg in (halp_trt, lut_builder):
            for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if info.name.endswith("__main__"):
                    continue
                importlib.import_module(info.name)
                names.append(info.name)
        assert "tensorrt" not in sys.modules
        print(len(names))
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) >= 8


def test_lut_builder_never_imports_halp_trt():
    """lut_builder is the lower layer: none of its modules, its CLI parser or its
    backends' registries pull in halp_trt (narrowed copies come from an entry point)."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil
        import lut_builder, lut_builder.backends, lut_builder.table, lut_builder.cli
        for info in pkgutil.walk_packages(lut_builder.__path__, "lut_builder."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
        lut_builder.cli.build_parser()
        lut_builder.backends.list_runners()
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "halp_trt")
        print("leaked:", leaked)
        """
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("leaked:")[-1].strip() == "[]"


def _subcommands(cli_module: str) -> list[str]:
    import importlib

    return list(importlib.import_module(cli_module).COMMANDS)


@pytest.mark.parametrize(
    "prog,module,cli_module",
    [("halp-trt", "halp_trt", "halp_trt.cli"), ("lut-builder", "lut_builder", "lut_builder.cli")],
)
def test_every_help_works_without_gpu_or_tensorrt(prog, module, cli_module):
    commands = _subcommands(cli_module)
    for args in ([], *([c] for c in commands)):
        code = (
            f"import sys, runpy; sys.argv = ['{prog}', *{args!r}, '--help']\n"
            f"runpy.run_module('{module}', run_name='__main__')"
        )
        proc = _python(code)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "usage:" in proc.stdout, args
        assert "Traceback" not in proc.stderr


def test_commands_from_a_fresh_interpreter_say_nothing_else(tmp_path):
    """The command-line tests run each command forked from a server that has imported
    torch, onnx and onnxruntime already (``tests/warm_cli.py``), where an import-time
    warning would not show: a command that imports all three and one user error, each
    from a cold start, to see that nothing else reaches stderr."""

    def cold(module: str, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", module, *args]
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)

    export = cold("halp_trt", "export", "--model", "halp_trt.models:resnet20",
                  "--input-shape", "1,3,8,8", "--out", "m.onnx")  # fmt: skip
    assert export.returncode == 0 and export.stderr == "", export.stderr
    assert "parity PASSED" in export.stdout
    error = cold("lut_builder", "build", "--model", "halp_trt.models:nope",
                 "--input-shape", "1,3,8,8", "--backend", "onnxruntime", "--out", "t.db")  # fmt: skip
    assert error.returncode == 2 and error.stderr.count("\n") == 1, error.stderr
    assert error.stderr.startswith("lut-builder: error: module 'halp_trt.models' has no model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

"""The README's Python examples run as written.

The fenced ``python`` blocks that follow a ``<!-- snippet: NAME -->`` line in README.md
are run in README order, as a reader would paste them, in one fresh interpreter in an
empty directory: later ones continue from earlier ones (the Lightning example uses the
plain loop's table). They build their own latency table and data, so they need nothing
but the installed package. The table is measured with a shorter timing loop than the
default (``build_table`` is wrapped to pass ``backend_options``; the README's call is run
unchanged): 15 seconds instead of 85 on a 2-core CPU, and the test is of the code as
written, not of its timings.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from .conftest import subprocess_env

README = Path(__file__).resolve().parents[1] / "README.md"
#: Run before the snippets: the short timing loop, for any ``build_table`` they import.
SHORT_TIMING = """\
import lut_builder
_build_table = lut_builder.build_table
def _short_build_table(*args, **kwargs):
    kwargs.setdefault("backend_options", {"min_time_s": 0.02, "runs": 5})
    return _build_table(*args, **kwargs)
lut_builder.build_table = _short_build_table
"""
_SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\s*```python\n(.*?)```", re.S)


def snippets() -> list[tuple[str, str]]:
    """README's marked snippets, in order, as ``(name, code)``."""
    return _SNIPPET.findall(README.read_text())


def test_readme_snippets_run_as_written(tmp_path):
    found = snippets()
    names = [name for name, _ in found]
    assert names == ["plain-loop", "apply-plan", "lightning"]
    if importlib.util.find_spec("lightning") is None:  # an optional extra
        found = [(n, c) for n, c in found if n != "lightning"]
    code = "\n".join([SHORT_TIMING, *(c for _, c in found)])
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(tmp_path / ".env"),  # a broken CPU torchvision must not stop lightning
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    plain = [ln for ln in lines if ln.startswith("predicted ")]
    assert len(plain) == 1 and re.fullmatch(r"predicted [\d.]+ -> [\d.]+ ms \([\d.]+x\)", plain[0])
    assert {"resnet20.lut", "plan.json", "slim.pt"} <= {p.name for p in tmp_path.iterdir()}
    if any(n == "lightning" for n, _ in found):
        assert any(ln.startswith("lightning: predicted ") for ln in lines), result.stdout
        assert (tmp_path / "plan_lightning.json").is_file()

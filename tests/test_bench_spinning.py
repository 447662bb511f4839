"""bench/spinning.py: bad arguments are one line; a small run reports both settings."""

from __future__ import annotations

import json

from tests.conftest import load_bench


def test_bad_arguments_are_one_line(capsys):
    spinning = load_bench("spinning")
    assert spinning.main(["--threads", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("spinning.py: error:")


def test_a_short_run_times_both_settings_and_writes_json(tmp_path, capsys):
    spinning = load_bench("spinning")
    out = tmp_path / "s.json"
    assert spinning.main(["--rounds", "4", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["spinning"] for r in rows] == [True, False]
    for r in rows:
        assert 0 < r["ratio"] < 2 and r["ratio_iqr"][0] <= r["ratio"] <= r["ratio_iqr"][1]
        assert r["dense_alone_ms"] > 0 and r["dense_interleaved_ms"] > 0

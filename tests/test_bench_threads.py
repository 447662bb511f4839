"""bench/threads.py: the pruner's own last measurement read back from a pruning log."""

from __future__ import annotations

import json

from tests.conftest import load_bench


def load_threads():
    return load_bench("threads")


def test_pruner_measurement_reads_the_last_step_and_counts_the_unmeasured(tmp_path):
    threads = load_threads()
    log = tmp_path / "log.json"
    log.write_text(
        json.dumps(
            {
                "feedback": {
                    "steps_measured_ratio": [0.9, None, 0.51],
                    "steps_measured_halfwidth": [0.004, None, 0.012],
                }
            }
        )
    )
    assert threads.pruner_measurement(log) == {
        "pruner_measured_ratio": 0.51,
        "pruner_halfwidth": 0.012,
        "pruner_steps_unmeasured": 1,
    }
    # A log from before the interval was recorded, and one without feedback.
    log.write_text(json.dumps({"feedback": {"steps_measured_ratio": [0.7, 0.49]}}))
    got = threads.pruner_measurement(log)
    assert got["pruner_measured_ratio"] == 0.49 and got["pruner_halfwidth"] is None
    log.write_text(json.dumps({"steps": []}))
    assert set(threads.pruner_measurement(log).values()) == {None}

"""What counting MACs would have predicted for the models a fidelity run measured.

``bench/lut_fidelity.py`` times a model, its uniformly narrowed copies and randomly
pruned copies end to end, and records what the latency table predicted for each. This
script rebuilds the same models from the run's JSON (the random widths are stored in it;
which channels are kept does not change a count) and sets the MAC count's prediction of
each speed-up beside the table's, against the measured one:

- measured ratio: the pruned model's measured latency over the unpruned model's;
- table ratio: the table's predictions (layers + calibration) in the same ratio;
- MACs ratio: the pruned model's multiply-accumulates over the unpruned model's.

Per run: median and max relative error of each ratio against the measured one, and the
rank correlation of each with the measured latencies and the fraction of pairs of models
it puts in the other order (does a predictor order the models as the device does?). Nothing is timed: it runs anywhere the model can be built.

    python bench/fidelity_macs.py bench/results/gpu/lut_fidelity_torchvision_resnet18_b32.json \\
        --out bench/results/fidelity_macs.json

Bad input (a file that is not a fidelity run, a model that cannot be built) is one line,
exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan_agreement import spearman  # noqa: E402  (None under 3 points or a constant side)


class InputError(Exception):
    """Bad input: reported in one line with exit code 2."""


def misordered(pred: list[float], measured: list[float]) -> float:
    """Fraction of the pairs of models that ``pred`` puts in the other order than
    ``measured`` (ties in either count as ordered)."""
    pairs = [(i, j) for i in range(len(pred)) for j in range(i + 1, len(pred))]
    bad = sum((pred[i] - pred[j]) * (measured[i] - measured[j]) < 0 for i, j in pairs)
    return bad / len(pairs) if pairs else float("nan")


def load_run(path: Path) -> dict:
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a JSON file ({exc})") from None
    need = ("model", "input_shape", "rows", "assignments")
    if not isinstance(run, dict) or any(k not in run for k in need):
        raise InputError(f"{path}: not a bench/lut_fidelity.py result (needs {', '.join(need)})")
    rows = run["rows"]
    if not rows or rows[0].get("model") != "unpruned":
        raise InputError(f"{path}: its first row is not the unpruned model")
    samples = [r for r in rows if r.get("sample")]
    if len(samples) != len(run["assignments"]):
        raise InputError(
            f"{path}: {len(samples)} pruned rows but {len(run['assignments'])} assignments"
        )
    for r in rows:
        if not all(isinstance(r.get(k), (int, float)) for k in ("measured_ms", "pred_table_ms")):
            raise InputError(f"{path}: row {r.get('model')!r} lacks measured_ms/pred_table_ms")
    return run


def model_macs(run: dict) -> list[int]:
    """MACs of every row's model, in the rows' order (at batch 1: a ratio is the same)."""
    import copy

    from halp_trt.graph import CALIBRATION_FRACTIONS, ChannelGraph, calibration_variants
    from lut_builder.specs import example_input, load_model

    spec = run["model"]
    try:
        model = load_model(spec).eval()
    except Exception as exc:
        raise InputError(f"cannot build {spec}: {type(exc).__name__}: {exc}") from None
    x = example_input(model, (1, *run["input_shape"][1:]))
    graph = ChannelGraph(copy.deepcopy(model), x)
    step = int(run.get("step") or 1)
    uniform = dict(zip(CALIBRATION_FRACTIONS, calibration_variants(model, x, step)))
    sizes = {g.id: g.size for g in graph.prunable}
    out, samples = [], iter(run["assignments"])
    for row in run["rows"]:
        name = row["model"]
        if name == "unpruned":
            m = model
        elif name.startswith("uniform_"):
            m = uniform.get(float(name.removeprefix("uniform_")))
            if m is None:
                raise InputError(f"{name}: no such uniform copy ({CALIBRATION_FRACTIONS})")
        else:
            keep = {int(g): k for g, k in next(samples).items()}
            bad = [g for g, k in keep.items() if g not in sizes or not 0 < k <= sizes[g]]
            if bad:
                raise InputError(f"{name}: groups {bad} are not prunable groups of {spec}")
            m = copy.deepcopy(model)
            ChannelGraph(m, x).remove({g: list(range(k)) for g, k in keep.items()})
        out.append(ChannelGraph(copy.deepcopy(m), x).macs)
    return out


def compare(path: Path) -> dict:
    run = load_run(path)
    macs = model_macs(run)
    rows, base = [], run["rows"][0]
    for r, mac in zip(run["rows"], macs):
        meas = r["measured_ms"] / base["measured_ms"]
        table = r["pred_table_ms"] / base["pred_table_ms"]
        mac_r = mac / macs[0]
        rows.append(
            {
                "model": r["model"],
                "sample": bool(r.get("sample")),
                "measured_ratio": meas,
                "table_ratio": table,
                "macs_ratio": mac_r,
                "err_table": (table - meas) / meas,
                "err_macs": (mac_r - meas) / meas,
            }
        )
    pruned = [r for r in rows if r["sample"]]
    measured = [r["measured_ratio"] for r in pruned]

    def summary(key: str, ratio: str) -> dict:
        errs = [abs(r[key]) for r in pruned]
        pred = [r[ratio] for r in pruned]
        return {
            "median_abs": statistics.median(errs),
            "max_abs": max(errs),
            "spearman": spearman(pred, measured),
            "pairs_misordered": misordered(pred, measured),
        }

    fp = run.get("table_fingerprint") or {}
    return {
        "run": str(rel.relative_to(ROOT) if (rel := path.resolve()).is_relative_to(ROOT) else path),
        "model": run["model"],
        "input_shape": run["input_shape"],
        "backend": run.get("backend"),
        "precision": run.get("precision"),
        "device": fp.get("device"),
        "samples": len(pruned),
        "table": summary("err_table", "table_ratio"),
        "macs": summary("err_macs", "macs_ratio"),
        "measured_ratio_range": [min(measured), max(measured)],
        "macs_ratio_range": [
            min(r["macs_ratio"] for r in pruned),
            max(r["macs_ratio"] for r in pruned),
        ],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench/lut_fidelity.py JSON results")
    ap.add_argument("--out", type=Path, help="write the comparison here (JSON)")
    args = ap.parse_args(argv)
    try:
        if args.out is not None and not args.out.parent.is_dir():
            raise InputError(f"--out: {args.out.parent} is not a directory")
        results = [compare(p) for p in args.runs]
    except InputError as exc:
        print(f"fidelity_macs.py: error: {exc}", file=sys.stderr)
        return 2

    def fmt(rho: float | None) -> str:
        return "   -" if rho is None else f"{rho:>4.2f}"

    head = (
        f"{'run':<52} {'n':>3}  {'table med/max':>14}  {'MACs med/max':>14}  {'rho t/M':>9}"
        f"  {'misordered t/M':>14}"
    )
    print(head)
    for r in results:
        t, m = r["table"], r["macs"]
        print(
            f"{Path(r['run']).stem[:52]:<52} {r['samples']:>3}  "
            f"{t['median_abs']:>6.1%} /{t['max_abs']:>6.1%}  "
            f"{m['median_abs']:>6.1%} /{m['max_abs']:>6.1%}  "
            f"{fmt(t['spearman'])}/{fmt(m['spearman'])}  "
            f"{t['pairs_misordered']:>6.1%}/{m['pairs_misordered']:>6.1%}"
        )
    if args.out is not None:
        from lut_builder.fileio import atomic_write_json

        cmd = "python bench/fidelity_macs.py " + shlex.join(r["run"] for r in results)
        atomic_write_json(args.out, {"results": results, "command": cmd + f" --out {args.out}"})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

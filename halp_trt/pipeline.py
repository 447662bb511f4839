"""`halp-trt run`: from a model and a latency budget to a verified, deployable model.

Stages, each writing its outputs into the run directory and recorded in ``run.json``
as it completes, so ``--resume`` continues after the last completed one:

========  ==========================================================================
lut       the latency table (``lut.db``): reused from ``--lut`` only when its device
          fingerprint matches the backend here, else measured (itself resumable)
baseline  the dense model (``original.pt``), trained first when ``--pretrain-epochs``,
          and its accuracy
prune     HALP's pruning loop with fine-tuning (``pruned/model.pt``, ``plan.json``,
          ``log.json``), by ``halp-trt prune``
export    both models to ONNX with the ONNX Runtime parity check (``*.onnx``)
engine    TensorRT engines (``*.engine`` + sidecars) where TensorRT is present
verify    original vs pruned on the backend, interleaved, one run (``verify.json``)
report    ``report.json``, ``report.md`` and ``plots/``
========  ==========================================================================

A stage that fails stops the run with one line naming it (exit code 2), lists the
outputs of the stages before it and keeps them; its traceback, if it was not a user
error, goes to ``error.log`` in the run directory.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

STAGES = ("lut", "baseline", "prune", "export", "engine", "verify", "report")
STATE_FILE = "run.json"
#: The arguments each stage's result depends on (besides the stages before it). On
#: --resume, a stage whose arguments changed is run again, and so is every later stage.
STAGE_ARGS = {
    "lut": ("model", "input_shape", "backend", "precision", "step", "lut"),
    "baseline": ("model", "data", "input_shape", "pretrain_epochs", "seed", "batch_size", "lr"),
    "prune": ("target", "importance", "epochs", "steps", "seed", "batch_size", "lr"),
    "export": (),
    "engine": (),
    "verify": ("verify_rounds",),
    "report": (),
}
PINNED_ARGS = tuple(sorted({a for names in STAGE_ARGS.values() for a in names}))


class StageError(UserError):
    """A stage of the run failed; the message names it and what was kept."""


def tensorrt_available() -> bool:
    """TensorRT's Python package imports and a CUDA GPU is visible."""
    import importlib.util

    import torch

    # find_spec, not import: importing TensorRT loads the CUDA libraries.
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def pick_backend(requested: str) -> tuple[str, str]:
    """Resolve ``auto`` to a backend: TensorRT, else PyTorch on CUDA, else ONNX Runtime.

    Returns:
        (backend, why) where ``why`` says in words how it was chosen.
    """
    import torch

    if requested != "auto":
        return requested, "as asked"
    if tensorrt_available():
        return "tensorrt", "auto: TensorRT and a CUDA GPU are present"
    if torch.cuda.is_available():
        return "torch", "auto: a CUDA GPU is present, TensorRT is not"
    return "onnxruntime", "auto: no CUDA GPU, so ONNX Runtime on the CPU"


@dataclass
class RunState:
    """What ``run.json`` holds: the arguments and, per completed stage, its outputs."""

    args: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    backend: str = ""
    backend_reason: str = ""

    def save(self, out: Path) -> None:
        from .report import write_json

        write_json(out / STATE_FILE, self.__dict__)

    @classmethod
    def load(cls, out: Path) -> RunState:
        try:
            data = json.loads((out / STATE_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{out / STATE_FILE} is not a run state file: {exc}") from None

    def done(self, stage: str, out: Path) -> bool:
        rec = self.stages.get(stage)
        return bool(rec) and all((out / p).exists() for p in rec.get("outputs", []))

    def invalidate_from(self, stage: str, out: Path) -> None:
        """Forget ``stage`` and every stage after it, and delete their outputs."""
        for s in STAGES[STAGES.index(stage) :]:
            for rel in self.stages.pop(s, {}).get("outputs", []):
                (out / rel).unlink(missing_ok=True)

    def kept(self) -> list[str]:
        return [p for s in STAGES for p in self.stages.get(s, {}).get("outputs", [])]


class Pipeline:
    """One ``halp-trt run``. See the module docstring for the stages.

    Args:
        args: the parsed ``halp-trt run`` arguments.
        say: where progress lines go.
    """

    def __init__(self, args: Any, say: Callable[[str], None] = print) -> None:
        self.args = args
        self.say = say
        self.out = Path(args.out)
        self.state: RunState | None = None
        self.facts: dict[str, Any] = {}

    # -- driving ------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check the cheap inputs before any stage runs: a typo should not cost a table.

        Raises:
            UserError: bad target, input shape, model spec, data spec or numbers.
        """
        from .prune.schedule import split_target
        from .specs import example_input, load_model, parse_shape
        from .train import load_data

        args = self.args
        split_target(args.target)
        for name in ("epochs", "steps", "batch_size", "verify_rounds"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if args.pretrain_epochs < 0:
            raise UserError("--pretrain-epochs must be >= 0")
        if args.lut and not Path(args.lut).is_file():
            raise UserError(f"--lut {args.lut} does not exist")
        shape = parse_shape(args.input_shape)
        if len(shape) != 4:
            raise UserError(f"--input-shape must be N,C,H,W, not {args.input_shape}")
        example_input(load_model(args.model), shape)
        load_data(args.data, channels=shape[1], size=(shape[2], shape[3]))

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage; returns the report dict."""
        self.preflight()
        self._open_state()
        assert self.state is not None
        for stage in STAGES:
            if self.state.done(stage, self.out) and stage in self.state.stages:
                self.say(f"[{stage}] done already: {', '.join(self._outputs(stage)) or '-'}")
                continue
            self.say(f"[{stage}] ...")
            t0 = time.perf_counter()
            try:
                outputs, facts = getattr(self, f"_stage_{stage}")()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # every failure names its stage and what was kept
                self._fail(stage, exc)
            self.state.stages[stage] = {
                "outputs": outputs,
                "facts": facts,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            self.state.save(self.out)
        return json.loads((self.out / "report.json").read_text())

    def _outputs(self, stage: str) -> list[str]:
        assert self.state is not None
        return self.state.stages.get(stage, {}).get("outputs", [])

    def _facts(self, stage: str) -> dict[str, Any]:
        assert self.state is not None
        return self.state.stages.get(stage, {}).get("facts", {})

    def _open_state(self) -> None:
        args = self.args
        pinned = {k: getattr(args, k, None) for k in PINNED_ARGS}
        state_file = self.out / STATE_FILE
        if state_file.exists():
            if not args.resume:
                raise UserError(
                    f"{self.out} holds an earlier run: add --resume to continue it, or "
                    "choose another --out"
                )
            self.state = RunState.load(self.out)
            changed = {k for k in PINNED_ARGS if self.state.args.get(k) != pinned[k]}
            if "backend" in changed:
                raise UserError(
                    f"{self.out} was run on backend {self.state.args.get('backend')}: "
                    "resume it with the same --backend, or choose another --out"
                )
            for stage in STAGES:
                if changed & set(STAGE_ARGS[stage]) or not self.state.done(stage, self.out):
                    if self.state.stages.get(stage) or stage != STAGES[-1]:
                        self.state.invalidate_from(stage, self.out)
                    break
            self.state.args = pinned
            self.state.save(self.out)
            self.say(
                f"resuming {self.out} on {self.state.backend}"
                + (f" with new {', '.join(sorted(changed))}" if changed else "")
            )
            return
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise UserError(f"--out {self.out} exists and is not an empty directory")
        backend, why = pick_backend(args.backend)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = RunState(args=pinned, backend=backend, backend_reason=why)
        self.state.save(self.out)
        self.say(f"backend: {backend} ({why})")

    def _fail(self, stage: str, exc: BaseException) -> None:
        assert self.state is not None
        if not isinstance(exc, UserError):
            (self.out / "error.log").write_text(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            )
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, SystemExit):
            detail = f"the {stage} command exited with code {exc.code}"
        kept = self.state.kept()
        kept_txt = f"kept in {self.out}: {', '.join(kept)}" if kept else "nothing kept"
        hint = "" if isinstance(exc, UserError) else f" (traceback in {self.out / 'error.log'})"
        raise StageError(
            f"stage {stage} failed: {detail}{hint}; {kept_txt}; fix it and rerun with --resume"
        ) from exc

    # -- helpers ------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        assert self.state is not None
        return self.state.backend

    def _halp(self, *argv: str) -> int:
        """Run a halp-trt subcommand in this process (its own validation included)."""
        from .cli import build_parser

        parsed = build_parser().parse_args([str(a) for a in argv])
        return int(parsed._run(parsed) or 0)

    def _path(self, name: str) -> Path:
        return self.out / name

    # -- stages -------------------------------------------------------------------------

    def _stage_lut(self) -> tuple[list[str], dict[str, Any]]:
        from lut_builder.backends import get_backend
        from lut_builder.cli import build_parser
        from lut_builder.table import LatencyTable

        args = self.args
        target = self._path("lut.db")
        if args.lut:
            backend = get_backend(self.backend, **self._backend_options())
            expect = backend.fingerprint()
            backend.close()
            try:
                table = LatencyTable.open(args.lut, expect=expect)
            except UserError as exc:
                self.say(f"[lut] not reusing {args.lut}: {str(exc).splitlines()[0]}")
            else:
                table.close()
                import shutil

                shutil.copyfile(args.lut, target)
                self.say(f"[lut] reusing {args.lut}: its fingerprint matches")
                return ["lut.db"], {"reused": str(args.lut)}
        argv = [
            "build",
            "--model",
            args.model,
            "--input-shape",
            args.input_shape,
            "--backend",
            self.backend,
            "--precision",
            args.precision,
            "--out",
            str(target),
        ]
        if args.step:
            argv += ["--step", str(args.step)]
        parsed = build_parser().parse_args(argv)
        parsed._run(parsed)
        return ["lut.db"], {"reused": None}

    def _backend_options(self) -> dict[str, Any]:
        return {"precision": self.args.precision} if self.args.precision else {}

    def _stage_baseline(self) -> tuple[list[str], dict[str, Any]]:
        import torch

        from .graph import ChannelGraph
        from .specs import example_input, load_model, parse_shape
        from .train import TrainConfig, Trainer, evaluate, load_data

        args = self.args
        shape = parse_shape(args.input_shape)
        torch.manual_seed(args.seed)
        model = load_model(args.model)
        x = example_input(model, shape)
        data = load_data(args.data, channels=shape[1], size=(shape[2], shape[3]))
        epochs = []
        if args.pretrain_epochs:
            config = TrainConfig(
                epochs=args.pretrain_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
            )
            epochs = Trainer(model, data, config, progress=not args.no_progress).fit().epochs
        model = model.cpu().eval()
        _, acc = evaluate(model, data.val, device=torch.device("cpu"))
        graph = ChannelGraph(model, x.cpu())
        torch.save(model, self._path("original.pt"))
        self.say(f"[baseline] val accuracy {acc:.4f}; {graph.params / 1e6:.3f} M parameters")
        return ["original.pt"], {
            "accuracy": acc,
            "macs": graph.macs,
            "params": graph.params,
            "epochs": epochs,
        }

    def _stage_prune(self) -> tuple[list[str], dict[str, Any]]:
        args = self.args
        argv = [
            "prune",
            "--model",
            self._path("original.pt"),
            "--data",
            args.data,
            "--lut",
            self._path("lut.db"),
            "--target",
            args.target,
            "--input-shape",
            args.input_shape,
            "--importance",
            args.importance,
            "--epochs",
            args.epochs,
            "--steps",
            args.steps,
            "--seed",
            args.seed,
            "--batch-size",
            args.batch_size,
            "--lr",
            args.lr,
            "--out",
            self._path("pruned"),
        ]
        if args.no_progress:
            argv.append("--no-progress")
        self._halp(*argv)
        return ["pruned/model.pt", "pruned/plan.json", "pruned/log.json"], {}

    def _stage_export(self) -> tuple[list[str], dict[str, Any]]:
        outs = []
        for name, src in (("original", "original.pt"), ("pruned", "pruned/model.pt")):
            argv = [
                "export",
                "--model",
                self._path(src),
                "--input-shape",
                self.args.input_shape,
                "--out",
                self._path(f"{name}.onnx"),
            ]
            if self.args.precision == "fp16" and self.backend == "tensorrt":
                argv.append("--fp16")
            self._halp(*argv)
            outs.append(f"{name}.onnx")
        return outs, {}

    def _stage_engine(self) -> tuple[list[str], dict[str, Any]]:
        if self.backend != "tensorrt":
            self.say("[engine] skipped: the backend is not TensorRT")
            return [], {"skipped": f"backend {self.backend}"}
        outs = []
        for name in ("original", "pruned"):
            self._halp(
                "engine",
                "--onnx",
                self._path(f"{name}.onnx"),
                "--out",
                self._path(f"{name}.engine"),
                "--timing-cache",
                self._path("timing.cache"),
            )
            outs += [f"{name}.engine", f"{name}.engine.json"]
        return outs, {}

    def _stage_verify(self) -> tuple[list[str], dict[str, Any]]:
        src = {
            "tensorrt": ("original.engine", "pruned.engine"),
            "onnxruntime": ("original.onnx", "pruned.onnx"),
            "torch": ("original.pt", "pruned/model.pt"),
        }[self.backend]
        argv = [
            "verify",
            "--original",
            self._path(src[0]),
            "--pruned",
            self._path(src[1]),
            "--backend",
            self.backend,
            "--plan",
            self._path("pruned/plan.json"),
            "--lut",
            self._path("lut.db"),
            "--rounds",
            self.args.verify_rounds,
            "--out",
            self._path("verify.json"),
        ]
        if self.backend == "torch":
            import torch

            argv += ["--precision", self.args.precision]
            argv += ["--device", "cuda" if torch.cuda.is_available() else "cpu"]
        self._halp(*argv)
        return ["verify.json"], {}

    def _stage_report(self) -> tuple[list[str], dict[str, Any]]:
        from .report import render, write_json

        report = self.build_report()
        write_json(self._path("report.json"), report)
        plots = render(report, self.out)
        self.facts["plots"] = plots
        return ["report.json", "report.md", *plots.values()], {}

    # -- the report ---------------------------------------------------------------------

    def build_report(self) -> dict[str, Any]:
        """Assemble ``report.json`` from the stages' outputs."""
        import torch

        from lut_builder.table import LatencyTable

        from ._version import __version__
        from .graph import ChannelGraph
        from .specs import example_input, parse_shape

        assert self.state is not None
        args = self.args
        plan = json.loads(self._path("pruned/plan.json").read_text())
        log = json.loads(self._path("pruned/log.json").read_text())
        verify = json.loads(self._path("verify.json").read_text())
        table = LatencyTable.open(self._path("lut.db"), force=True)
        fingerprint = dict(table.fingerprint)
        table.close()
        pruning = plan.get("pruning", {})
        base = self._facts("baseline")
        shape = parse_shape(args.input_shape)
        pruned_model = torch.load(self._path("pruned/model.pt"), weights_only=False)
        pg = ChannelGraph(pruned_model, example_input(pruned_model, shape))
        b_ms = _median(verify.get("original"))
        p_ms = _median(verify.get("pruned"))
        speed = verify.get("speedup") or {}
        groups = [
            {"id": g["id"], "size": g["size"], "kept": g["kept"]} for g in plan.get("groups", [])
        ]
        engines = self._outputs("engine")
        steps = pruning.get("steps") or log.get("steps") or []
        log_steps = {s.get("step"): s for s in log.get("steps", [])}
        steps = [
            {**s, **{k: v for k, v in log_steps.get(s.get("step"), {}).items() if k not in s}}
            for s in steps
        ]
        target_ms = pruning.get("target_ms")
        return {
            "halp_trt_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": args.model,
            "data": args.data,
            "input_shape": list(shape),
            "backend": self.backend,
            "backend_reason": self.state.backend_reason,
            "precision": args.precision,
            "fingerprint": fingerprint,
            "target": {"spec": args.target, "ms": target_ms},
            "baseline": {
                "latency_ms": b_ms,
                "predicted_ms": pruning.get("base_ms"),
                "accuracy": (log.get("before") or {}).get("val_acc", base.get("accuracy")),
                "macs": base.get("macs"),
                "params": base.get("params"),
            },
            "pruned": {
                "latency_ms": p_ms,
                "predicted_ms": plan.get("predicted_ms"),
                "accuracy": (log.get("after") or {}).get("val_acc"),
                "macs": pg.macs,
                "params": pg.params,
            },
            "predicted_latency_ms": plan.get("predicted_ms"),
            "predicted_speedup": pruning.get("speedup"),
            "speedup": speed.get("median"),
            "speedup_spread": speed.get("spread"),
            "target_met": _target_met(args.target, target_ms, b_ms, p_ms),
            "groups": groups,
            "steps": steps,
            "verify": verify,
            "artifacts": {
                "lut": "lut.db",
                "model": "pruned/model.pt",
                "plan": "pruned/plan.json",
                "onnx": "pruned.onnx",
                "engine": "pruned.engine" if "pruned.engine" in engines else None,
            },
            "stages": {k: v.get("seconds") for k, v in self.state.stages.items()},
        }


def _median(timing: Any) -> float | None:
    if not isinstance(timing, dict):
        return None
    return timing.get("median_ms")


def _target_met(
    target: str, target_ms: float | None, base_ms: float | None, pruned_ms: float | None
) -> bool:
    """The measured latency meets the target, with 5% tolerance.

    A relative target (``0.5x``) is checked on the measured ratio pruned / original, so
    an absolute offset of the table does not count against the pruning; an absolute one
    (``3ms``) on the measured milliseconds.
    """
    from .prune.schedule import split_target

    if not (target_ms and base_ms and pruned_ms):
        return False
    value, unit = split_target(target)
    if unit == "x":
        return pruned_ms / base_ms <= 1.05 * value
    return pruned_ms <= 1.05 * target_ms


def run_pipeline(args: Any, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``halp-trt run`` with parsed arguments; returns the report dict."""
    return Pipeline(args, say).run()

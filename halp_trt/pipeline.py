"""`halp-trt run`: from a model and a latency budget to a verified, deployable model.

Stages, each writing its outputs into the run directory and recorded in ``run.json``
as it completes, so ``--resume`` continues after the last completed one:

========  ==========================================================================
lut       the latency table (``lut.db``): reused from ``--lut`` only when its device
          fingerprint matches the backend here, else measured (itself resumable)
baseline  the dense model (``original.pt``), trained first when ``--pretrain-epochs``,
          and its accuracy
prune     HALP's pruning loop with fine-tuning (``pruned/model.pt``, ``plan.json``,
          ``log.json``), as ``halp-trt prune`` does it
export    both models to ONNX with the ONNX Runtime parity check (``*.onnx``); at
          ``int8`` both as INT8 Q/DQ calibrated on the run's training data, and the
          dense model in FP32 too (``original_fp32.onnx``, the report's FP32 column)
engine    TensorRT engines (``*.engine`` + sidecars) where TensorRT is present
verify    original vs pruned on the backend, interleaved, one run (``verify.json``);
          at ``int8`` also FP32 dense vs INT8 dense (``verify_fp32.json``)
report    ``report.json``, ``report.md`` and ``plots/``
========  ==========================================================================

Every stage is a library call with the :class:`~halp_trt.config.RunConfig` (no
command line is parsed here). A stage that fails stops the run with one line naming it
(exit code 2), lists the outputs of the stages before it and keeps them; its
traceback, if it was not a user error, goes to ``error.log`` in the run directory. What
the failed stage wrote itself is deleted, but for what a resume continues (the table's
measured points, TensorRT's timing cache); only the names the stage writes
(:data:`STAGE_WRITES`) are candidates, so a file of the user's in the directory stays.
A stage killed outright (SIGKILL) cleans nothing up; the resume does, deleting those
names of the stages it has still to run that no completed stage lists.

A resume that runs a completed stage again (its arguments changed, or an output is
gone) moves that stage's outputs and every later stage's into ``.previous`` with a copy
of ``run.json``, and deletes them only once the stage has succeeded again: if it fails
(or the run is killed, then at the next start) they are put back with the ``run.json``
that describes them, so a failed resume leaves the earlier results as they were.

Why this module is longer than 500 lines: it is one class whose methods are the stages
of one run; they share the run's state, directory and config, and the report is
assembled from the facts those same stages recorded. Each stage is a few lines calling
the library; split apart, each would need the whole state passed in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UserError
from .prune.schedule import DEFAULT_SPREAD

STAGES = ("lut", "baseline", "prune", "export", "engine", "verify", "report")
STATE_FILE = "run.json"
#: What a failed stage leaves for the resume to continue: the table's measured points
#: (and SQLite's journal beside it) and TensorRT's timing cache. Any other file it wrote
#: that was not there before is deleted (:meth:`Pipeline._remove_new`).
RESUMABLE = ("lut.db", "timing.cache")
#: The names (files or directories, at the top of the run directory) each stage may
#: write, besides its staging entries (hidden, named after one of these: see
#: :func:`_written_by`). When a stage fails, only a new entry of these is deleted.
STAGE_WRITES = {
    "lut": ("lut.db",),
    "baseline": ("original.pt",),
    "prune": ("pruned",),
    "export": ("original.onnx", "pruned.onnx", "original_fp32.onnx"),
    "engine": (
        "original.engine",
        "original.engine.json",
        "pruned.engine",
        "pruned.engine.json",
        "timing.cache",
    ),
    "verify": ("verify.json", "verify_fp32.json"),
    "report": ("report.json", "report.md", "plots"),
}
#: Held (``flock``) by the process running in the directory.
LOCK_FILE = ".lock"
#: Where a resume keeps the outputs of the stages it runs again (and the ``run.json``
#: that describes them) until the first of those stages has succeeded.
PREVIOUS_DIR = ".previous"
#: The arguments each stage's result depends on (besides the stages before it). On
#: --resume, a stage whose arguments changed is run again, and so is every later stage.
STAGE_ARGS = {
    "lut": (
        "model",
        "input_shape",
        "backend",
        "precision",
        "threads",
        "step",
        "lut",
    ),  # latency: not weights
    "baseline": (
        "model",
        "weights",
        "data",
        "input_shape",
        "pretrain_epochs",
        "seed",
        "batch_size",
        "lr",
        "bn_batches",
    ),
    "prune": (
        "target",
        "importance",
        "epochs",
        "steps",
        "prune_window",
        "min_interval",
        "min_keep",
        "calibration_batches",
        "short_run",
        "feedback",
        "seed",
        "batch_size",
        "lr",
        "bn_batches",
    ),
    "export": ("data",),
    "engine": (),
    "verify": ("verify_rounds",),
    "report": (),
}
PINNED_ARGS = tuple(sorted({a for names in STAGE_ARGS.values() for a in names}))
#: What a setting pinned later than a run's ``run.json`` was, for runs made before it.
PINNED_DEFAULTS = {
    "prune_window": DEFAULT_SPREAD,
    "min_interval": 1,
    "bn_batches": 0,
    "calibration_batches": 0,
    "short_run": "train",
}


def pinned_settings(config: RunConfig) -> dict[str, Any]:
    """The settings of :data:`STAGE_ARGS`, by the names ``run.json`` keeps."""
    p, t = config.prune, config.train
    settings = {
        "model": config.model,
        "weights": config.weights,
        "input_shape": config.shape_text,
        "backend": config.backend,
        "precision": config.precision,
        "threads": config.threads,
        "step": config.step,
        "lut": config.lut,
        "data": config.data,
        "pretrain_epochs": config.pretrain_epochs,
        "seed": t.seed,
        "batch_size": t.batch_size,
        "lr": t.lr,
        "bn_batches": t.bn_batches,
        "target": p.target,
        "importance": p.importance_name,
        "epochs": t.epochs,
        "steps": p.steps,
        "prune_window": p.prune_window,
        "min_interval": p.min_interval,
        "min_keep": p.min_keep,
        "calibration_batches": p.calibration_batches,
        "short_run": p.short_run,
        "feedback": config.feedback,
        "verify_rounds": config.verify_rounds,
    }
    assert set(settings) == set(PINNED_ARGS)
    return settings


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

    def invalidate_from(self, stage: str, out: Path, aside: Path | None = None) -> None:
        """Forget ``stage`` and every stage after it, and delete their outputs (or move
        them into ``aside``, at the same paths relative to it as to ``out``)."""
        for s in STAGES[STAGES.index(stage) :]:
            for rel in self.stages.pop(s, {}).get("outputs", []):
                if aside is None:
                    (out / rel).unlink(missing_ok=True)
                elif (out / rel).exists():
                    (aside / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(out / rel, aside / rel)

    def kept(self) -> list[str]:
        return [p for s in STAGES for p in self.stages.get(s, {}).get("outputs", [])]


class Pipeline:
    """One run of the whole path. See the module docstring for the stages.

    Args:
        config: what to run (validated already: a :class:`RunConfig`).
        say: where progress lines go.
    """

    def __init__(self, config: RunConfig, say: Callable[[str], None] = print) -> None:
        if not isinstance(config, RunConfig):
            raise TypeError(f"config must be a RunConfig, not {type(config).__name__}")
        self.config = config
        self.say = say
        self.out = Path(config.out)
        self.state: RunState | None = None
        self.facts: dict[str, Any] = {}

    # -- driving ------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check what the config cannot know before any stage runs or any file is
        written: a typo in a path, a backend that is not here or a model that does not
        take the input should not cost a table, nor leave a run directory behind.

        Raises:
            UserError: an ``out`` that cannot be written or holds another run (without
                ``resume``), a missing table or a file that is not one, a backend that
                cannot run here, a model spec that does not load or does not take the
                input shape, a data spec that does not load.
            ConfigError: a pruning interval longer than the training run.
        """
        from lut_builder.backends import get_backend
        from lut_builder.fileio import check_output, input_file

        from .specs import example_input, load_model
        from .train import Trainer, load_data

        cfg = self.config
        check_output(self.out, kind="dir", parents=True)
        if (self.out / STATE_FILE).exists():
            if not cfg.resume:
                raise UserError(
                    f"{self.out} holds an earlier run: add --resume to continue it, or "
                    "choose another --out"
                )
        elif self.out.is_dir() and any(p.name != LOCK_FILE for p in self.out.iterdir()):
            raise UserError(f"--out {self.out} exists and is not an empty directory")
        if cfg.lut:
            input_file(cfg.lut, "--lut", kind="a latency table file")
            check_table_deployment(cfg.lut, cfg.precision, cfg.threads)
        if not (self.out / STATE_FILE).exists():  # a resumed run keeps its backend
            backend, _ = pick_backend(cfg.backend)
            get_backend(backend, **self._backend_options()).close()  # here, and these options
        shape = cfg.input_shape
        model = load_model(cfg.model, weights=cfg.weights)
        example_input(model, shape)
        data = load_data(cfg.data, channels=shape[1], size=(shape[2], shape[3]))
        # A schedule that cannot fit the run fails now, not after the table is measured.
        per_epoch = Trainer(model, data, cfg.train).iterations_per_epoch
        cfg.prune.fit_schedule(per_epoch * cfg.train.epochs, per_epoch)

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage; returns the report dict.

        The run directory is locked for the whole run: a second run on it (or a
        resume while the first is still going) stops with one line.

        Raises:
            UserError: the preflight checks, a run directory in use, or a stage that
                failed (:class:`StageError`).
        """
        self.preflight()
        with self._locked():
            self._open_state()
            assert self.state is not None
            for stage in STAGES:
                if self.state.done(stage, self.out) and stage in self.state.stages:
                    self.say(f"[{stage}] done already: {', '.join(self._outputs(stage)) or '-'}")
                    continue
                self.say(f"[{stage}] ...")
                t0 = time.perf_counter()
                present = self._listing()
                try:
                    outputs, facts = getattr(self, f"_stage_{stage}")()
                except BaseException as exc:
                    self._remove_new(present, stage)
                    self._restore_previous()
                    if isinstance(exc, Exception):  # names its stage and what was kept
                        self._fail(stage, exc)
                    raise
                self._drop_previous()
                self.state.stages[stage] = {
                    "outputs": outputs,
                    "facts": facts,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
                self.state.save(self.out)
            return json.loads((self.out / "report.json").read_text())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``out``'s lock (an advisory ``flock`` on ``out/.lock``, released when
        the process ends however it ends); the directory is created here if needed."""
        import fcntl
        import os

        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = (self.out / LOCK_FILE).read_text().strip() or "another process"
            raise UserError(
                f"{self.out} is in use by another halp-trt run ({holder}): wait for it, or "
                "choose another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
            yield
        except BaseException:
            if not (self.out / STATE_FILE).exists():
                # Nothing of this run was kept: leave nothing of it behind either.
                (self.out / LOCK_FILE).unlink(missing_ok=True)
                if created:
                    with contextlib.suppress(OSError):
                        self.out.rmdir()
            raise
        finally:
            os.close(fd)

    def _outputs(self, stage: str) -> list[str]:
        assert self.state is not None
        return self.state.stages.get(stage, {}).get("outputs", [])

    def _facts(self, stage: str) -> dict[str, Any]:
        assert self.state is not None
        return self.state.stages.get(stage, {}).get("facts", {})

    def _open_state(self) -> None:
        cfg = self.config
        pinned = pinned_settings(cfg)
        state_file = self.out / STATE_FILE
        self._restore_previous()  # a resume killed before its first stage succeeded
        if state_file.exists():  # preflight refused it without --resume
            self.state = RunState.load(self.out)
            earlier = {**PINNED_DEFAULTS, **self.state.args}
            if "short_run" not in self.state.args and self._short_run_moot(earlier):
                earlier["short_run"] = pinned["short_run"]
            changed = {k for k in PINNED_ARGS if earlier.get(k) != pinned[k]}
            if "backend" in changed:
                raise UserError(
                    f"{self.out} was run on backend {self.state.args.get('backend')}: "
                    "resume it with the same --backend, or choose another --out"
                )
            for stage in STAGES:
                if changed & set(STAGE_ARGS[stage]) or not self.state.done(stage, self.out):
                    self._set_aside_from(stage)
                    break
            self.state.args = pinned
            self.state.save(self.out)
            self._remove_stale()
            self.say(
                f"resuming {self.out} on {self.state.backend}"
                + (f" with new {', '.join(sorted(changed))}" if changed else "")
            )
            return
        backend, why = pick_backend(cfg.backend)
        self.state = RunState(args=pinned, backend=backend, backend_reason=why)
        self.state.save(self.out)
        self.say(f"backend: {backend} ({why})")

    def _set_aside_from(self, stage: str) -> None:
        """Forget ``stage`` and every later stage; move their outputs into
        :data:`PREVIOUS_DIR` with a copy of ``run.json`` (written first), kept until
        the stage succeeds again (see the module notes)."""
        assert self.state is not None
        later = STAGES[STAGES.index(stage) :]
        self._check_inputs_not_redone(later)
        if not any(self.state.stages.get(s, {}).get("outputs") for s in later):
            self.state.invalidate_from(stage, self.out)  # no results to keep
            return
        previous = self.out / PREVIOUS_DIR
        shutil.rmtree(previous, ignore_errors=True)
        previous.mkdir()
        shutil.copyfile(self.out / STATE_FILE, previous / f"{STATE_FILE}.tmp")
        os.replace(previous / f"{STATE_FILE}.tmp", previous / STATE_FILE)
        self.state.invalidate_from(stage, self.out, aside=previous)

    def _check_inputs_not_redone(self, stages: list[str]) -> None:
        """Refuse, before anything moves, a resume whose own inputs (``--model``,
        ``--weights``, ``--lut``, ``--data npz:``) include an output of a stage it redoes:
        the stage would set its input aside with its outputs and fail on the missing
        file."""
        from lut_builder.cli_args import input_files

        assert self.state is not None
        mine = {
            os.path.realpath(self.out / rel): (s, rel)
            for s in stages
            for rel in self.state.stages.get(s, {}).get("outputs", [])
        }
        for flag, path in input_files(self.config).items():
            found = mine.get(os.path.realpath(path)) if path else None
            if found:
                stage, rel = found
                raise UserError(
                    f"{flag} {path} is {rel}, an output of this run's {stage} stage, which "
                    f"this resume runs again: copy it out of {self.out} first"
                )

    def _restore_previous(self) -> None:
        """Put back what :meth:`_set_aside_from` moved, ``run.json`` last, and read the
        state again; nothing when nothing is set aside."""
        previous = self.out / PREVIOUS_DIR
        if not previous.is_dir():
            return
        if (previous / STATE_FILE).exists():
            for rel in RunState.load(previous).kept():
                if (previous / rel).exists():
                    (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(previous / rel, self.out / rel)
            os.replace(previous / STATE_FILE, self.out / STATE_FILE)
            self.state = RunState.load(self.out)
        shutil.rmtree(previous)

    def _listing(self) -> set[str]:
        """Every file and directory in the run directory (relative, POSIX), but
        :data:`PREVIOUS_DIR`'s and the lock."""
        found = set()
        for root, dirs, files in os.walk(self.out):
            rel = Path(root).relative_to(self.out)
            if rel == Path("."):
                dirs[:] = [d for d in dirs if d != PREVIOUS_DIR]
            found.update((rel / name).as_posix() for name in dirs + files)
        found.discard(LOCK_FILE)
        return found

    def _remove_new(self, present: set[str], stage: str) -> None:
        """Delete what the failed ``stage`` wrote that was not in the run directory
        before it (``present``): its partial outputs would sit beside the results
        ``run.json`` lists, unlisted. Only the stage's own names are touched (a file
        the user put in the directory meanwhile stays); work a resume continues stays
        too (:data:`RESUMABLE`)."""
        self._remove(self._listing() - present, [stage])

    def _remove_stale(self) -> None:
        """On a resume, delete what a stage still to run left when it was killed (no
        cleanup runs after SIGKILL): entries it writes that no completed stage lists.
        It would write them again; the table's points and the timing cache stay."""
        assert self.state is not None
        kept = set(self.state.kept())
        todo = [s for s in STAGES if s not in self.state.stages]
        self._remove(self._listing() - kept, todo)

    def _remove(self, entries: set[str], stages: list[str]) -> None:
        """Delete those of ``entries`` (relative to the run directory) that one of
        ``stages`` writes, but :data:`RESUMABLE`; a directory only once empty."""
        for rel in sorted(entries, reverse=True):  # files before their directories
            if rel.split("-")[0] in RESUMABLE or not any(_written_by(rel, s) for s in stages):
                continue
            path = self.out / rel
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # only if empty: a kept file may be in it
                else:
                    path.unlink()

    def _drop_previous(self) -> None:
        """Delete what :meth:`_set_aside_from` moved: the stage it was for succeeded.
        Its ``run.json`` goes first, so that a stop half-way restores nothing."""
        previous = self.out / PREVIOUS_DIR
        if previous.is_dir():
            (previous / STATE_FILE).unlink(missing_ok=True)
            shutil.rmtree(previous)

    def _short_run_moot(self, earlier: dict[str, Any]) -> bool:
        """Whether a run made before ``short_run`` was pinned prunes the same under either
        value: it asked for one step or for calibration (kept as configured), or its
        prune stage logged two steps or more (room for them: not a short run)."""
        if earlier.get("steps", 2) < 2 or earlier.get("calibration_batches"):
            return True
        try:
            log = json.loads(self._path("pruned/log.json").read_text())
            return len(log["steps"]) > 1
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _fail(self, stage: str, exc: Exception) -> None:
        assert self.state is not None
        if not isinstance(exc, UserError):
            (self.out / "error.log").write_text(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            )
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
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

    def _path(self, name: str) -> Path:
        return self.out / name

    # -- stages -------------------------------------------------------------------------

    def _stage_lut(self) -> tuple[list[str], dict[str, Any]]:
        from lut_builder import LatencyTable
        from lut_builder.backends import get_backend

        cfg = self.config
        target = self._path("lut.db")
        if cfg.lut:
            backend = get_backend(self.backend, **self._backend_options())
            expect = backend.fingerprint()
            backend.close()
            try:
                table = LatencyTable.open(cfg.lut, expect=expect)
            except UserError as exc:
                self.say(f"[lut] not reusing {cfg.lut}: {str(exc).splitlines()[0]}")
            else:
                try:
                    table.copy_to(target)
                finally:
                    table.close()
                self.say(f"[lut] reusing {cfg.lut}: its fingerprint matches")
                return ["lut.db"], {"reused": str(cfg.lut)}
        result = self._build_table(target)
        self.say(
            f"[lut] {target}: {result.measured} points measured in {result.seconds:.1f} s, "
            f"latency model {result.scale:.3f} x layers {result.overhead_ms or 0.0:+.3f} ms"
        )
        return ["lut.db"], {"reused": None}

    def _backend_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"precision": self.config.precision}
        if self._on_cpu():
            options["threads"] = self.config.threads
        elif self._resolved_backend() == "torch":
            # The torch backend's own default is the CPU: on a GPU machine the table is
            # the GPU's (the training device when it is one, else the first GPU).
            device = self.config.train.device or "cuda"
            options["device"] = device if str(device).startswith("cuda") else "cuda"
        return options

    def _feedback(self) -> dict[str, Any] | None:
        """Measured-latency feedback while pruning: on a CPU backend at FP32, or the torch
        backend on this GPU at fp32/fp16/bf16 (each plan replayed as one CUDA graph, as
        the table's layers were timed), where the table was measured on this machine and
        a model loads in a second (a TensorRT engine per step would take minutes; an INT8
        model would need calibrating)."""
        if not self.config.feedback:
            return None
        if self._on_cpu():
            if self.config.precision != "fp32":
                return None
            return {"backend": self.backend, "threads": self.config.threads}
        if self._resolved_backend() != "torch" or self.config.precision not in (
            "fp32", "fp16", "bf16",
        ):  # fmt: skip
            return None
        return {"backend": "torch", "threads": None, "runner_options": self._backend_options()}

    def _resolved_backend(self) -> str:
        """The run's backend: the state's once it is open (a resumed run keeps its own),
        else what ``--backend`` resolves to here (preflight runs before the state)."""
        if self.state is not None:
            return self.state.backend
        return pick_backend(self.config.backend)[0]

    def _on_cpu(self) -> bool:
        """The backend runs on the CPU (its tables and timings have a thread count)."""
        import torch

        backend = self._resolved_backend()
        return backend == "onnxruntime" or (backend == "torch" and not torch.cuda.is_available())

    def _build_table(self, target: Path) -> Any:
        """Measure the table (resumable), calibrate its affine latency model on the
        model and its 3/4- and 1/2-width copies and check it on random-width ones."""
        from lut_builder import build_table
        from lut_builder.latency_model import describe_check
        from lut_builder.progress import measuring_bar

        from .graph import calibration_variants, check_variants
        from .specs import example_input, load_model

        cfg = self.config
        # The architecture only: latency does not depend on the weights (nor does this
        # stage, see STAGE_ARGS), so the weights file is not read here.
        model = load_model(cfg.model)
        x = example_input(model, cfg.input_shape)
        # The latency model is fitted on whole models at the table's precision and
        # thread count (an INT8 table: INT8 Q/DQ models).
        runner = self._backend_options()
        with measuring_bar(f"{cfg.model} on {self.backend}", show=cfg.progress) as bar:
            result = build_table(
                target,
                model,
                x,
                self.backend,
                backend_options=self._backend_options(),
                step=cfg.step,
                info={"model": cfg.model, "input_shape": list(cfg.input_shape)},
                calibration="affine",
                variants=calibration_variants,
                check_variants=check_variants,
                runner_options=runner,
                **bar,
            )
        if result.calibration_note:
            self.say(f"[lut] note: {result.calibration_note}")
        if result.check is not None:
            self.say(f"[lut] {describe_check(result.check)}")
        return result

    def _stage_baseline(self) -> tuple[list[str], dict[str, Any]]:
        import torch

        from .graph import ChannelGraph
        from .specs import example_input, load_model
        from .train import Trainer, evaluate, load_data

        cfg = self.config
        shape = cfg.input_shape
        torch.manual_seed(cfg.train.seed)
        model = load_model(cfg.model, weights=cfg.weights)
        x = example_input(model, shape)
        data = load_data(cfg.data, channels=shape[1], size=(shape[2], shape[3]))
        epochs = []
        if cfg.pretrain_epochs:
            pretrain = cfg.train.replace(epochs=cfg.pretrain_epochs)
            epochs = Trainer(model, data, pretrain, progress=cfg.progress).fit().epochs
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
        from .prune.distributed import process_group_from_env
        from .train.prune_job import prune_classifier, save_prune_result

        cfg = self.config
        with process_group_from_env(cfg.train.device) as device:
            result = prune_classifier(
                str(self._path("original.pt")),
                cfg.data,
                str(self._path("lut.db")),
                cfg.prune,
                cfg.train.replace(device=device),
                input_shape=cfg.input_shape,
                progress=cfg.progress,
                say=self.say,
                log_extra={"run": str(self.out)},
                feedback=self._feedback(),
            )
            save_prune_result(self._path("pruned"), result)
        return ["pruned/model.pt", "pruned/plan.json", "pruned/log.json"], {}

    def _stage_export(self) -> tuple[list[str], dict[str, Any]]:
        from .export import export_onnx
        from .specs import load_model

        if self.config.precision == "int8":
            return self._export_int8()
        outs = []
        fp16 = self.config.precision == "fp16" and self.backend == "tensorrt"
        for name, src in (("original", "original.pt"), ("pruned", "pruned/model.pt")):
            # Raises ParityError (and writes nothing) when ONNX Runtime disagrees.
            export_onnx(
                load_model(str(self._path(src))),
                self.config.input_shape,
                self._path(f"{name}.onnx"),
                fp16=fp16,
            )
            outs.append(f"{name}.onnx")
        return outs, {}

    def _export_int8(self) -> tuple[list[str], dict[str, Any]]:
        """Both models as INT8 Q/DQ, calibrated on the run's training data, in the
        flavour the backend runs (ONNX Runtime: UInt8 activations; TensorRT: symmetric
        Int8), and the dense model in FP32 for the report's comparison."""
        from .export import export_int8, export_onnx
        from .specs import load_model
        from .train import load_data

        cfg = self.config
        shape = cfg.input_shape
        flavor = "tensorrt" if self.backend == "tensorrt" else "onnxruntime"
        data = load_data(cfg.data, channels=shape[1], size=(shape[2], shape[3]))
        facts: dict[str, Any] = {"flavor": flavor}
        outs = []
        for name, src in (("original", "original.pt"), ("pruned", "pruned/model.pt")):
            model = load_model(str(self._path(src)))
            report = export_int8(model, shape, self._path(f"{name}.onnx"), data, flavor=flavor)
            outs.append(f"{name}.onnx")
            facts[name] = {
                "accuracy": report.accuracy,
                "size_bytes": report.size_bytes,
                "int8_convs": report.int8_convs,
                "float_convs": report.float_convs,
                "tensorrt_problems": report.tensorrt_problems,
            }
            self.say(
                f"[export] {name}: INT8 accuracy {report.accuracy['int8']:.4f} (FP32 "
                f"{report.accuracy['fp32']:.4f}, top-1 agreement "
                f"{report.accuracy['agreement']:.4f}); {report.int8_convs} INT8 convs, "
                f"{report.float_convs} float on ONNX Runtime"
            )
        export_onnx(load_model(str(self._path("original.pt"))), shape, self._path("original_fp32.onnx"))  # fmt: skip
        outs.append("original_fp32.onnx")
        return outs, facts

    def _stage_engine(self) -> tuple[list[str], dict[str, Any]]:
        from .export import build_engine

        if self.backend != "tensorrt":
            self.say("[engine] skipped: the backend is not TensorRT")
            return [], {"skipped": f"backend {self.backend}"}
        outs = []
        for name in ("original", "pruned"):
            build_engine(
                self._path(f"{name}.onnx"),
                self._path(f"{name}.engine"),
                timing_cache=self._path("timing.cache"),
            )
            outs += [f"{name}.engine", f"{name}.engine.json"]
        return outs, {}

    def _stage_verify(self) -> tuple[list[str], dict[str, Any]]:
        from lut_builder import LatencyTable

        from .prune.apply import load_plan
        from .specs import load_model
        from .verify import verify_models

        src = {
            "tensorrt": ("original.engine", "pruned.engine"),
            "onnxruntime": ("original.onnx", "pruned.onnx"),
            "torch": ("original.pt", "pruned/model.pt"),
        }[self.backend]
        models: list[Any] = [str(self._path(s)) for s in src]
        options: dict[str, Any] = {"threads": self.config.threads} if self._on_cpu() else {}
        if self.backend == "torch":
            models = [load_model(m) for m in models]
            options.update(
                precision=self.config.precision,
                device=self._backend_options().get("device", "cpu"),
            )
        table = LatencyTable.open(self._path("lut.db"), force=True)
        try:
            report = verify_models(
                models[0],
                models[1],
                backend=self.backend,
                input_shape=self.config.input_shape,
                rounds=self.config.verify_rounds,
                plan=load_plan(self._path("pruned/plan.json")),
                sources=(str(self._path(src[0])), str(self._path(src[1]))),
                table=table,
                **options,
            )
        finally:
            table.close()
        from lut_builder.fileio import atomic_write_json

        atomic_write_json(self._path("verify.json"), report.to_dict())
        speed = report.speedup
        self.say(
            f"[verify] speed-up {speed.median:.3f}x (spread {speed.spread:.1%}) over "
            f"{report.rounds} rounds on {self.backend}"
        )
        outs = ["verify.json"]
        if self.config.precision == "int8":
            # FP32 dense vs INT8 dense, interleaved in a run of their own (ONNX files:
            # every runner backend takes them).
            fp32 = verify_models(
                str(self._path("original_fp32.onnx")),
                str(self._path("original.onnx")),
                backend=self.backend,
                input_shape=self.config.input_shape,
                rounds=self.config.verify_rounds,
                labels=("fp32 dense", "int8 dense"),
                sources=("original_fp32.onnx", "original.onnx"),
                **({"threads": self.config.threads} if self._on_cpu() else {}),
            )
            atomic_write_json(self._path("verify_fp32.json"), fp32.to_dict())
            self.say(f"[verify] INT8 dense runs {fp32.speedup.median:.3f}x FP32 dense")
            outs.append("verify_fp32.json")
        return outs, {}

    def _stage_report(self) -> tuple[list[str], dict[str, Any]]:
        from .report import render, write_json

        report = self.build_report()
        write_json(self._path("report.json"), report)
        plots = render(report, self.out)
        self.facts["plots"] = plots
        return ["report.json", "report.md", *plots.values()], {}

    # -- the report ---------------------------------------------------------------------

    def _precisions(self, verify: dict[str, Any]) -> list[dict[str, Any]]:
        """FP32 dense, INT8 dense and INT8 pruned side by side (an INT8 run's report).

        Latencies come from two interleaved runs: FP32 dense vs INT8 dense
        (``verify_fp32.json``) and INT8 dense vs INT8 pruned (``verify.json``); the INT8
        pruned figure is scaled through the dense INT8 model both runs timed, so the
        three compare as ratios of one clock."""
        exp = self._facts("export")
        fp32 = json.loads(self._path("verify_fp32.json").read_text())
        f_ms, i_ms = _median(fp32.get("original")), _median(fp32.get("pruned"))
        speed = (verify.get("speedup") or {}).get("median")
        p_ms = i_ms / speed if i_ms and speed else None
        o, p = exp.get("original", {}), exp.get("pruned", {})
        size = {
            "fp32 dense": (self._path("original_fp32.onnx")).stat().st_size,
            "int8 dense": (o.get("size_bytes") or {}).get("int8"),
            "int8 pruned": (p.get("size_bytes") or {}).get("int8"),
        }
        acc = {
            "fp32 dense": (o.get("accuracy") or {}).get("fp32"),
            "int8 dense": (o.get("accuracy") or {}).get("int8"),
            "int8 pruned": (p.get("accuracy") or {}).get("int8"),
        }
        rows = []
        for name, ms in (("fp32 dense", f_ms), ("int8 dense", i_ms), ("int8 pruned", p_ms)):
            rows.append(
                {
                    "model": name,
                    "latency_ms": ms,
                    "speedup_vs_fp32": (f_ms / ms) if f_ms and ms else None,
                    "accuracy": acc[name],
                    "size_bytes": size[name],
                }
            )
        return rows

    def build_report(self) -> dict[str, Any]:
        """Assemble ``report.json`` from the stages' outputs."""
        from lut_builder import LatencyTable

        from ._version import __version__
        from .graph import ChannelGraph
        from .specs import example_input, load_saved

        assert self.state is not None
        cfg = self.config
        plan = json.loads(self._path("pruned/plan.json").read_text())
        log = json.loads(self._path("pruned/log.json").read_text())
        verify = json.loads(self._path("verify.json").read_text())
        table = LatencyTable.open(self._path("lut.db"), force=True)
        fingerprint = dict(table.fingerprint)
        table.close()
        pruning = plan.get("pruning", {})
        base = self._facts("baseline")
        shape = cfg.input_shape
        pruned_model = load_saved(self._path("pruned/model.pt"))
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
            "model": cfg.model,
            "data": cfg.data,
            "input_shape": list(shape),
            "backend": self.backend,
            "backend_reason": self.state.backend_reason,
            "precision": cfg.precision,
            "fingerprint": fingerprint,
            "target": {"spec": cfg.prune.target, "ms": target_ms},
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
            # verify's verdict (one tolerance: halp_trt.verify.compare.BUDGET_TOLERANCE)
            "target_met": bool((verify.get("plan") or {}).get("within_budget")),
            "precisions": self._precisions(verify) if cfg.precision == "int8" else None,
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


def _written_by(rel: str, stage: str) -> bool:
    """Whether the run directory's entry ``rel`` (relative, POSIX) is one the stage
    writes: one of its :data:`STAGE_WRITES` or inside one, or a hidden staging entry
    named after one (``.pruned.partial-x1``, ``.original.onnx.x1``, ``.verify.ab12.tmp.json``,
    ``.report-x1``: the library's atomic writers stage beside their target)."""
    top = rel.split("/")[0]
    names = STAGE_WRITES[stage]
    if top in names:
        return True
    if not top.startswith("."):
        return False
    return any(
        top[1:].startswith((f"{stem}.", f"{stem}-")) for stem in {n.split(".")[0] for n in names}
    )


def check_table_deployment(path: str, precision: str, threads: int) -> None:
    """Refuse a ``--lut`` measured at another precision or CPU thread count than the run's.

    Raises:
        UserError: the file is not a latency table (or a damaged one: as ``prune --lut``
            refuses it; a table measured for another device is left to the lut stage,
            which says so and measures a new one), or its fingerprint names another
            precision or thread count.
    """
    from lut_builder import LatencyTable
    from lut_builder.table import table_threads

    table = LatencyTable.open(path, force=True)
    try:
        theirs = table.fingerprint.get("precision")
        their_threads = table_threads(table.fingerprint)
    finally:
        table.close()
    if their_threads is not None and their_threads != threads:
        raise UserError(
            f"--lut {path} was measured at {their_threads} CPU thread"
            f"{'s' if their_threads != 1 else ''}, this run deploys at --threads {threads}: "
            "give a table measured at that count, or drop --lut to measure one"
        )
    if theirs is not None and theirs != precision:
        raise UserError(
            f"--lut {path} was measured at {theirs}, this run is at {precision}: give a "
            f"table measured at {precision}, or drop --lut to measure one"
        )


def _median(timing: Any) -> float | None:
    if not isinstance(timing, dict):
        return None
    return timing.get("median_ms")


def run(config: RunConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole path (table, baseline, pruning, export, engines, verify, report).

    Args:
        config: a :class:`~halp_trt.config.RunConfig` (or a dict / JSON path of one).
        say: where progress lines go.

    Returns:
        The report (also in ``config.out``/``report.json``).

    Raises:
        ConfigError: a config value its field does not allow.
        UserError: an input that does not fit (before any stage runs), or a failed
            stage (:class:`StageError`: the message names it and what was kept).
    """
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    elif isinstance(config, (str, Path)):
        config = RunConfig.from_json(config)
    return Pipeline(config, say).run()

"""ONNX Runtime against PyTorch through Polygraphy's Comparator.

The exported file runs on ONNX Runtime (CPU); the PyTorch module it came from, in fp32,
is the reference. Both get the same random normal inputs, at each batch size asked for
(the smallest and largest of a dynamic batch range, so the dynamic axis is exercised).

Tolerances, per output (``TOLERANCES``): an element passes when its error is within
``tol`` relative to the reference element, or within ``tol`` times the output's largest
reference magnitude (its scale). The headline figure is the **max relative error**,
``max |onnx - torch| / max |torch|`` over every element, output and batch: an error
relative to the output's scale, which a logit near zero cannot inflate. Polygraphy's
element-wise maximum relative error is reported beside it. fp32 exports must stay under
1e-4; fp16 exports, compared with the fp32 module, under 1e-2.

Polygraphy ships a ``PytRunner``, but it moves inputs to CUDA and zips a single output
tensor over its batch dimension, so :class:`TorchModuleRunner` is a small runner of our
own that runs on the CPU and names single or tuple outputs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lut_builder.errors import UserError

#: precision -> relative tolerance (to the element and to the output's scale).
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}


class ParityError(UserError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""

    exit_code = 1


@dataclass(frozen=True)
class OutputParity:
    """Worst-case errors of one output over every batch compared.

    Attributes:
        name: output name.
        max_abs: largest absolute difference.
        scale: largest reference magnitude.
        max_rel: ``max_abs / scale`` (the headline relative error).
        max_rel_elementwise: Polygraphy's largest element-wise relative difference.
        passed: every batch passed the check.
    """

    name: str
    max_abs: float
    scale: float
    max_rel: float
    max_rel_elementwise: float
    passed: bool


@dataclass
class ParityReport:
    """The result of :func:`check_parity`."""

    passed: bool
    precision: str
    tolerance: float
    batches: list[int]
    outputs: list[OutputParity] = field(default_factory=list)
    runner: str = "onnxruntime (CPU)"
    reference: str = "pytorch fp32 (CPU)"

    @property
    def max_rel(self) -> float:
        """The largest relative error over all outputs."""
        return max((o.max_rel for o in self.outputs), default=0.0)

    def summary(self) -> str:
        """One line: verdict, error, tolerance, batches."""
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"parity {verdict}: {self.runner} vs {self.reference}, max relative error "
            f"{self.max_rel:.2e} (tolerance {self.tolerance:.0e}, {self.precision}), "
            f"batches {', '.join(map(str, self.batches))}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["max_rel"] = self.max_rel
        return d


def torch_runner_class() -> type:
    """The Polygraphy runner class for a PyTorch module (built on first use)."""
    from polygraphy.backend.base import BaseRunner

    class TorchModuleRunner(BaseRunner):
        """Runs an ``nn.Module`` on the CPU in its own dtype; inputs are cast to it."""

        def __init__(self, model: Any, input_metadata: Any, output_names: Sequence[str]):
            super().__init__(name="pytorch", prefix="pytorch-runner")
            self.model = model
            self.input_metadata = input_metadata
            self.output_names = list(output_names)

        def activate_impl(self) -> None:
            self.model.eval()

        def deactivate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> Any:
            return self.input_metadata

        def infer_impl(self, feed_dict: dict) -> OrderedDict:
            import numpy as np
            import torch

            dtype = next(self.model.parameters()).dtype
            inputs = [torch.from_numpy(np.asarray(v)).to(dtype) for v in feed_dict.values()]
            start = time.perf_counter()
            with torch.no_grad():
                out = self.model(*inputs)
            self.inference_time = time.perf_counter() - start
            tensors = flatten_outputs(out)
            if len(tensors) != len(self.output_names):
                raise UserError(
                    f"the module returns {len(tensors)} tensors, the ONNX file has "
                    f"{len(self.output_names)} outputs"
                )
            return OrderedDict(
                (n, t.detach().float().numpy()) for n, t in zip(self.output_names, tensors)
            )

    return TorchModuleRunner


def flatten_outputs(out: Any) -> list[Any]:
    """The tensors of a module's output: a tensor, or (nested) tuples/lists/dicts of them."""
    import torch

    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    return []


def check_parity(
    onnx_path: str | Path,
    model: Any,
    *,
    batches: Sequence[int],
    precision: str = "fp32",
    seed: int = 0,
) -> ParityReport:
    """Compare an ONNX file on ONNX Runtime with the PyTorch module it came from.

    Args:
        onnx_path: the exported file (one input, batch first).
        model: the fp32 reference module (CPU).
        batches: batch sizes to compare at.
        precision: ``"fp32"`` or ``"fp16"``: the ONNX file's precision, which sets the
            input dtype and the tolerance.
        seed: seed of the random inputs.

    Returns:
        A :class:`ParityReport` (check ``passed``).

    Raises:
        UserError: the file has more than one input, or ONNX Runtime cannot load it.
    """
    import numpy as np
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    tol = TOLERANCES[precision]
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load {str(onnx_path)!r}: {exc}") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise UserError(f"parity is checked for one-input models, not {len(inputs)} inputs")
    name, shape = inputs[0].name, inputs[0].shape
    np_dtype = np.float16 if precision == "fp16" else np.float32
    rest = [int(d) for d in shape[1:]]
    rng = np.random.default_rng(seed)
    feeds = [OrderedDict({name: rng.standard_normal((b, *rest)).astype(np_dtype)}) for b in batches]
    meta = TensorMetadata().add(name, np_dtype, (-1, *rest))
    output_names = [o.name for o in outputs]
    ort_runner = OnnxrtRunner(lambda: session, name="onnxruntime")
    torch_runner = torch_runner_class()(model, meta, output_names)
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results = Comparator.run([ort_runner, torch_runner], data_loader=feeds)
        reference = results[1][1]
        scale = {
            o: max(float(np.abs(it[o]).max()) for it in reference) or 1.0 for o in output_names
        }
        compare = SimpleCompareFunc(rtol=tol, atol={o: tol * scale[o] for o in output_names})
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    per_iteration = next(iter(accuracy[0].values()))
    report = []
    for o in output_names:
        checks = [it[o] for it in per_iteration]
        max_abs = max(c.max_absdiff for c in checks)
        report.append(
            OutputParity(
                name=o,
                max_abs=max_abs,
                scale=scale[o],
                max_rel=max_abs / scale[o],
                max_rel_elementwise=max(c.max_reldiff for c in checks),
                passed=all(bool(c) for c in checks),
            )
        )
    return ParityReport(
        passed=all(o.passed for o in report),
        precision=precision,
        tolerance=tol,
        batches=list(batches),
        outputs=report,
    )

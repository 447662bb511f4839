"""Export and deploy: ONNX export with a parity check, TensorRT engines with a sidecar.

- :func:`export_onnx` (``halp-trt export``): ``torch.onnx.export``, onnx-graphsurgeon
  cleanup, ``onnx.checker``, ONNX Runtime vs PyTorch parity (Polygraphy).
- :func:`export_int8` (``halp-trt export --int8``): the same, then INT8 Q/DQ calibrated
  on the user's data by ONNX Runtime's quantizer, with accuracy and agreement.
- :func:`build_engine` (``halp-trt engine``): a strongly typed TensorRT 10/11 engine and
  its ``.engine.json`` sidecar, written atomically.
- :func:`load_engine`: an engine checked against its sidecar, this TensorRT and this GPU
  before it is deserialised.

Importing this package needs neither onnx, ONNX Runtime, TensorRT nor a GPU.
"""

from .engine import build_engine, plan_build, resolve_profiles
from .int8 import Int8Report, export_int8
from .onnx_export import BatchRange, ExportError, ExportReport, export_onnx
from .parity import ParityError, ParityReport, check_parity
from .sidecar import EngineMismatch, EngineSidecar, load_engine, sidecar_path

__all__ = [
    "BatchRange",
    "EngineMismatch",
    "EngineSidecar",
    "ExportError",
    "ExportReport",
    "Int8Report",
    "ParityError",
    "ParityReport",
    "build_engine",
    "check_parity",
    "export_int8",
    "export_onnx",
    "load_engine",
    "plan_build",
    "resolve_profiles",
    "sidecar_path",
]

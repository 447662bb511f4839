"""A deterministic roofline model: for tests, dry runs and planning, never a measurement.

latency = launch + max(MACs / peak, bytes / bandwidth), with every channel count first
rounded up to ``alignment`` (a kernel processes whole channel tiles, so latency is a
staircase in the channel counts, as on real engines). Tables built with it carry
``is_measurement: false`` in their fingerprint, and ``lut-builder show`` says so.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UserError
from ..signatures import LayerSignature
from ..timing import Timing
from .base import Backend, check_channels, register_backend

_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@register_backend("analytic")
class AnalyticBackend(Backend):
    """Roofline latency model with channel-alignment steps.

    Args:
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (sets bytes per element and peak).
        device: ignored except for the fingerprint (accepted for a uniform CLI).
        alignment: channel tile; counts are rounded up to a multiple of it.
        peak_gmacs: multiply-accumulates per second, in units of 1e9, at fp32 (fp16 and
            bf16 run at 4x).
        bandwidth_gbs: memory bandwidth in GB/s.
        launch_us: fixed cost per layer in microseconds.

    Raises:
        UserError: unknown precision or non-positive parameters.
    """

    name = "analytic"
    is_measurement = False

    def __init__(
        self,
        *,
        precision: str = "fp32",
        device: str | None = None,
        alignment: int = 8,
        peak_gmacs: float = 50.0,
        bandwidth_gbs: float = 20.0,
        launch_us: float = 5.0,
    ) -> None:
        if precision not in _BYTES:
            raise UserError(f"unknown precision {precision!r}; known: {', '.join(_BYTES)}")
        if alignment < 1 or peak_gmacs <= 0 or bandwidth_gbs <= 0 or launch_us < 0:
            raise UserError("alignment, peak_gmacs and bandwidth_gbs must be positive")
        self.precision = precision
        self.device = device
        self.alignment = alignment
        self.peak_gmacs = peak_gmacs * (1 if precision == "fp32" else 4)
        self.bandwidth_gbs = bandwidth_gbs
        self.launch_us = launch_us

    def latency_ms(self, sig: LayerSignature, c_in: int, c_out: int) -> float:
        """The model's latency in milliseconds (deterministic)."""
        check_channels(sig, c_in, c_out)
        a = self.alignment
        ci, co = (math.ceil(c / a) * a for c in (c_in, c_out))
        if sig.group_mode == "depthwise":
            ci = co = max(ci, co)
        elif sig.group_mode == "grouped":
            ci, co = (max(c, sig.groups, sig.group_width) for c in (ci, co))
        macs = sig.macs(ci, co)
        (h, w), (oh, ow) = sig.in_hw, sig.out_hw
        k = sig.kernel[0] * sig.kernel[1]
        per_out = ci // max(sig.groups_at(ci), 1)
        elems = sig.batch * (ci * h * w + co * oh * ow) + co * per_out * k
        compute_s = macs / (self.peak_gmacs * 1e9)
        memory_s = elems * _BYTES[self.precision] / (self.bandwidth_gbs * 1e9)
        return self.launch_us * 1e-3 + max(compute_s, memory_s) * 1e3

    def measure(self, sig: LayerSignature, c_in: int, c_out: int) -> Timing:
        """The model's latency as a :class:`Timing` with no dispersion (``n == 1``)."""
        ms = self.latency_ms(sig, c_in, c_out)
        return Timing(ms, ms, ms, ms, 0.0, 1)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "precision": self.precision,
            "device": "analytic roofline model (not a measurement)",
            "is_measurement": False,
            "versions": {},
            "options": {
                "alignment": self.alignment,
                "peak_gmacs": self.peak_gmacs,
                "bandwidth_gbs": self.bandwidth_gbs,
                "launch_us": self.launch_us,
            },
        }

"""HALP pruning inside other training frameworks.

Each integration is its own module and imports its framework there, so importing this
package needs nothing beyond halp-trt's own dependencies:

- :mod:`halp_trt.integrations.lightning`: ``HALPCallback`` for a PyTorch Lightning
  ``Trainer`` (``pip install "halp-trt[lightning]"``).
"""

"""The distribution's version; its one source is halp_trt/_version.py (read by packaging)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("halp-trt")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

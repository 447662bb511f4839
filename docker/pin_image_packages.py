"""Print pip constraints that pin what the base image ships (torch built for its CUDA,
TensorRT, numpy), so that installing halp-trt never replaces them with PyPI builds."""

import contextlib
import importlib.metadata as md

for dist in ("torch", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "numpy"):
    with contextlib.suppress(md.PackageNotFoundError):  # not in this image: no pin
        print(f"{dist}=={md.version(dist)}")

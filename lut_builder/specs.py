"""Model specs: how a user names a model on the command line.

Accepted forms:

- ``torchvision:NAME``            a torchvision classification/detection model, untrained
- ``timm:NAME``                   a timm model, untrained
- ``package.module:NAME``         an attribute of an importable module (``halp_trt.models:resnet56``)
- ``path/to/file.py:factory``     a callable (or module object) defined in a Python file
- ``path/to/model.pt``            a module saved with ``torch.save(module)``

Factories are called without arguments; an attribute that is already an ``nn.Module``
is used as is. Weights are never downloaded: hub models are built untrained.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from .errors import ShapeError, SpecError

_SAVED_SUFFIXES = (".pt", ".pth")


def load_model(spec: str) -> Any:
    """Resolve a model spec to an ``nn.Module`` in eval mode.

    Raises:
        SpecError: the spec is malformed, names nothing, its import or factory raises
            or exits, or the result is not an ``nn.Module``.
    """
    import torch.nn as nn

    if not spec or not spec.strip():
        raise SpecError("empty model spec")
    spec = spec.strip()
    try:
        obj = _resolve(spec)
    except SystemExit as exc:  # the user's code called sys.exit() or exit() on import
        raise SpecError(
            f"model spec {spec!r}: loading it called sys.exit({exc.code!r}); a model file "
            "must not exit when imported (guard scripts with if __name__ == '__main__')"
        ) from None
    if not isinstance(obj, nn.Module):
        raise SpecError(f"model spec {spec!r} gives a {type(obj).__name__}, not a torch.nn.Module")
    return obj.eval()


def _resolve(spec: str) -> Any:
    if spec.endswith(_SAVED_SUFFIXES) and ":" not in Path(spec).name:
        return _load_saved(Path(spec))
    if ":" not in spec:
        raise SpecError(
            f"model spec {spec!r} is not one of torchvision:NAME, timm:NAME, "
            "package.module:NAME, path/file.py:factory or a saved .pt file"
        )
    source, _, name = spec.rpartition(":")
    if not name:
        raise SpecError(f"model spec {spec!r} names no model after ':'")
    if source == "torchvision":
        return _torchvision(name)
    if source == "timm":
        return _timm(name)
    if source.endswith(".py"):
        return _call(_from_file(Path(source), name), spec)
    if re.fullmatch(r"[A-Za-z_][\w.]*", source):
        return _call(_from_module(source, name), spec)
    raise SpecError(f"model spec {spec!r}: {source!r} is neither a module name nor a .py file")


def _call(factory: Any, spec: str) -> Any:
    import torch.nn as nn

    if isinstance(factory, nn.Module) or not callable(factory):
        return factory
    try:
        return factory()
    except Exception as exc:  # the user's factory: any failure is theirs to see
        raise SpecError(f"model spec {spec!r}: factory raised {type(exc).__name__}: {exc}") from exc


def _from_module(module_name: str, attr: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import module {module_name!r}: {exc}") from exc
    if not hasattr(module, attr):
        known = getattr(module, "list_models", None)
        hint = f" (known: {', '.join(known())})" if callable(known) else ""
        raise SpecError(f"module {module_name!r} has no model {attr!r}{hint}")
    return getattr(module, attr)


def _from_file(path: Path, attr: str) -> Any:
    if not path.is_file():
        raise SpecError(f"model file {str(path)!r} does not exist")
    mod_name = f"_halp_user_model_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise SpecError(f"cannot load {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module  # classes defined there must stay picklable
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise SpecError(f"{str(path)!r} failed to import: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise SpecError(f"{str(path)!r} defines no {attr!r}")
    return getattr(module, attr)


def _load_saved(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise SpecError(f"model file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SpecError(
            f"{str(path)!r} is not a module saved with torch.save: {type(exc).__name__}: {exc}"
        ) from exc


def _torchvision(name: str) -> Any:
    try:
        import torchvision.models as tvm
    except Exception as exc:  # no build for this platform fails with more than ImportError
        raise SpecError(f"torchvision is not usable here ({type(exc).__name__}: {exc})") from exc
    try:
        return tvm.get_model(name, weights=None)
    except ValueError as exc:
        raise SpecError(f"torchvision has no model {name!r}") from exc


def _timm(name: str) -> Any:
    try:
        import timm
    except Exception as exc:
        raise SpecError(f"timm is not usable here ({type(exc).__name__}: {exc})") from exc
    try:
        return timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise SpecError(f"timm has no model {name!r}: {exc}") from exc


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``N,C,H,W`` (or any comma/x-separated positive integers) into a tuple.

    Raises:
        ShapeError: not a list of positive integers.
    """
    parts = [p for p in re.split(r"[,x×]", text.strip()) if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ShapeError(
            f"input shape {text!r} is not a list of integers like 1,3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise ShapeError(f"input shape {text!r} must be positive integers like 1,3,224,224")
    return dims


def example_input(model: Any, shape: tuple[int, ...]) -> Any:
    """A random input of ``shape`` on the model's device, checked by one forward pass.

    Raises:
        ShapeError: the model does not accept an input of this shape.
    """
    import torch

    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.randn(*shape, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise ShapeError(
            f"the model does not accept an input of shape {tuple(shape)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return x

"""Model specs: how a user names a model on the command line.

Accepted forms:

- ``torchvision:NAME``            a torchvision classification/detection model, untrained
- ``timm:NAME``                   a timm model, untrained
- ``package.module:NAME``         an attribute of an importable module (``halp_trt.models:resnet56``)
- ``path/to/file.py:factory``     a callable (or module object) defined in a Python file
- ``path/to/model.pt``            a module saved with ``torch.save(module)``

A factory spec may end in keyword arguments for the factory, comma-separated:
``torchvision:mobilenet_v2,num_classes=10,width_mult=0.5``. Each value is a Python
literal (``10``, ``0.5``, ``True``, ``None``, ``'a b'``, ``(3,3)``) or else a bare word,
taken as a string (``act_layer=relu``), so a spec needs no quoting in a shell unless a
value holds brackets or spaces. An attribute that is already an ``nn.Module`` is used
as is and takes no keywords. Weights are never downloaded: hub models are built
untrained; trained weights come from a state_dict file (``load_model(spec, weights=)``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ShapeError, SpecError
from .fileio import input_file

_SAVED_SUFFIXES = (".pt", ".pth")
#: The help of every command's ``--weights`` flag.
WEIGHTS_HELP = (
    "trained weights for --model: a state_dict saved with torch.save, or a checkpoint "
    "holding one under state_dict, model or model_state_dict (a DDP module. prefix is fine)"
)


def load_model(spec: str, weights: str | Path | None = None) -> Any:
    """Resolve a model spec to an ``nn.Module`` in eval mode, with trained weights.

    Args:
        spec: ``torchvision:NAME``, ``timm:NAME``, ``package.module:NAME``,
            ``path/file.py:factory`` (each optionally followed by factory keywords,
            ``,key=value,...``; see the module docstring) or a ``.pt`` file holding a
            module saved with ``torch.save``.
        weights: a file saved with ``torch.save`` holding a state_dict, a checkpoint
            dict with a ``state_dict``, ``model`` or ``model_state_dict`` entry, or a
            module; a ``module.`` prefix (DistributedDataParallel) is dropped. Loaded
            with ``strict=True``.

    Returns:
        The ``nn.Module``, in eval mode.

    Raises:
        SpecError: the spec is malformed, names nothing, its import or factory raises
            or exits, a keyword is malformed or not accepted by the factory, the result
            is not an ``nn.Module``, or the weights do not load or do not fit it
            (missing, unexpected or differently shaped entries).
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
    if weights is not None:
        load_weights(obj, weights, spec)
    return obj.eval()


#: ``source:name`` and, after a comma, the factory's keywords. The first ``:`` followed
#: by a name and then a comma or the end splits: a Windows drive (``C:\\``) or a ``:`` in
#: a keyword's value does not.
_SPLIT = re.compile(r":([A-Za-z_][\w.]*)(?:,|$)")
_WORD = re.compile(r"[A-Za-z_][\w.\-]*")


def spec_file(spec: str | None) -> str | None:
    """The file a model spec is read from: the saved module, or the ``.py`` file of
    ``path/file.py:factory`` (None for a module name, torchvision or timm). For the
    checks that an output is not one of a command's inputs."""
    spec = (spec or "").strip()
    match = _SPLIT.search(spec)
    if spec.endswith(_SAVED_SUFFIXES) and ":" not in Path(spec).name or match is None:
        return spec or None
    source = spec[: match.start()]
    return source if source.endswith(".py") else None


def _resolve(spec: str) -> Any:
    if spec.endswith(_SAVED_SUFFIXES) and ":" not in Path(spec).name:
        return load_saved(spec)
    if ":" not in spec:
        raise SpecError(
            f"model spec {spec!r} is not one of torchvision:NAME, timm:NAME, "
            "package.module:NAME, path/file.py:factory or a saved .pt file"
        )
    match = _SPLIT.search(spec)
    if match is None:
        raise SpecError(f"model spec {spec!r} names no model after ':'")
    source, name = spec[: match.start()], match.group(1)
    kwargs = parse_kwargs(spec[match.end() :], spec) if match.group(0).endswith(",") else {}
    if source == "torchvision":
        return _torchvision(name, kwargs, spec)
    if source == "timm":
        return _timm(name, kwargs, spec)
    if source.endswith(".py"):
        return _call(_from_file(Path(source), name), kwargs, spec)
    if re.fullmatch(r"[A-Za-z_][\w.]*", source):
        return _call(_from_module(source, name), kwargs, spec)
    raise SpecError(f"model spec {spec!r}: {source!r} is neither a module name nor a .py file")


def parse_kwargs(text: str, spec: str = "") -> dict[str, Any]:
    """Parse ``key=value,key=value`` (the tail of a model spec) into a dict.

    A value is a Python literal (``ast.literal_eval``: numbers, ``True``/``False``/
    ``None``, quoted strings, tuples, lists) or a bare word (``relu``, ``nn.ReLU``),
    kept as a string. Nothing is evaluated.

    Raises:
        SpecError: not ``key=value`` pairs, a repeated key, or a value that is neither
            a literal nor a bare word.
    """
    where = f"model spec {spec!r}" if spec else f"keywords {text!r}"
    form = "keywords must read key=value,key=value (e.g. num_classes=10,width_mult=0.5)"
    try:
        call = ast.parse(f"_({text})", mode="eval").body
    except SyntaxError:
        raise SpecError(f"{where}: {form}, not {text!r}") from None
    if not isinstance(call, ast.Call) or call.args or not call.keywords:
        raise SpecError(f"{where}: {form}, not {text!r}")
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise SpecError(f"{where}: {form}, not {text!r}")
        if kw.arg in out:
            raise SpecError(f"{where}: keyword {kw.arg!r} is given twice")
        source = ast.get_source_segment(f"_({text})", kw.value) or ""
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            if not _WORD.fullmatch(source):
                raise SpecError(
                    f"{where}: the value of {kw.arg} ({source}) is neither a Python literal "
                    "nor a bare word"
                ) from None
            out[kw.arg] = source
    return out


def _accepted(factory: Any) -> list[str] | None:
    """The keywords ``factory`` names, or None when it takes ``**kwargs`` (or hides its
    signature) and only the call can tell."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds]


def _unexpected(exc: TypeError, kwargs: Mapping[str, Any]) -> str | None:
    """The keyword a TypeError of the factory call complains about, if it is one given."""
    m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    return m.group(1) if m and m.group(1) in kwargs else None


def _invoke(factory: Any, label: str, kwargs: dict[str, Any], spec: str) -> Any:
    """Call ``factory(**kwargs)``; a keyword it does not take is one SpecError line."""
    accepted = _accepted(factory)
    if kwargs and accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise SpecError(
                    f"model spec {spec!r}: {label} takes no keyword {key!r} (it takes: "
                    f"{', '.join(accepted) or 'none'})"
                )
    try:
        return factory(**kwargs)
    except TypeError as exc:
        key = _unexpected(exc, kwargs)
        if key is not None:
            raise SpecError(
                f"model spec {spec!r}: {label} takes no keyword {key!r} ({exc})"
            ) from None
        raise SpecError(f"model spec {spec!r}: {label} raised TypeError: {exc}") from exc
    except SpecError:
        raise
    except Exception as exc:  # the user's factory: any failure is theirs to see
        raise SpecError(f"model spec {spec!r}: {label} raised {type(exc).__name__}: {exc}") from exc


def _call(factory: Any, kwargs: dict[str, Any], spec: str) -> Any:
    import torch.nn as nn

    if isinstance(factory, nn.Module) or not callable(factory):
        if kwargs:
            raise SpecError(
                f"model spec {spec!r} names a {type(factory).__name__}, not a factory: it "
                "takes no keywords"
            )
        return factory
    return _invoke(factory, "the factory", kwargs, spec)


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


#: A model file (``path/file.py:factory``) is imported as a module named after its
#: resolved path, hex-encoded: classes defined there pickle under that name, so a model
#: saved with ``torch.save`` names the file to import again when it is loaded in another
#: process (:func:`load_saved`).
FILE_MODULE_PREFIX = "_halp_user_model_"


def _file_module_name(path: Path) -> str:
    return FILE_MODULE_PREFIX + os.fsencode(path.resolve()).hex()


def _file_of_module(name: str) -> Path | None:
    """The model file a module made by :func:`_from_file` came from (None: not one)."""
    if not name.startswith(FILE_MODULE_PREFIX):
        return None
    try:
        path = Path(os.fsdecode(bytes.fromhex(name[len(FILE_MODULE_PREFIX) :])))
    except ValueError:  # not hex
        return None
    return path if path.is_absolute() else None


def _import_file(path: Path, mod_name: str) -> Any:
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
    return module


def _from_file(path: Path, attr: str) -> Any:
    input_file(path, "model file", error=SpecError)
    module = _import_file(path, _file_module_name(path))
    if not hasattr(module, attr):
        raise SpecError(f"{str(path)!r} defines no {attr!r}")
    return getattr(module, attr)


def unpickle_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=False)`` on the CPU, importing again any model file
    (``path/file.py:factory``) whose classes the pickle names: a model pruned from a
    model file loads in a new process while that file is where it was.

    Raises:
        SpecError: the pickle names a model file that is gone (one line naming it).
        Exception: whatever ``torch.load`` raises otherwise.
    """
    import torch

    for _ in range(64):  # a file per distinct model file the pickle names
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as exc:
            source = _file_of_module(exc.name or "")
            if source is None or exc.name in sys.modules:
                raise
            if not source.is_file():
                raise SpecError(
                    f"{str(path)!r} holds a model whose classes are defined in "
                    f"{str(source)!r}, which does not exist: put that file back, or save "
                    "the model again from where it is now"
                ) from None
            _import_file(source, exc.name)
    raise SpecError(f"{str(path)!r} names too many model files to import")


def load_saved(path: str | Path) -> Any:
    """A module saved with ``torch.save`` (see :func:`unpickle_file`).

    Raises:
        SpecError: the file is missing, is not such a module, or names a model file
            that is gone.
    """
    path = input_file(path, "model file", error=SpecError)
    try:
        return unpickle_file(path)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(
            f"{str(path)!r} is not a module saved with torch.save: {type(exc).__name__}: {exc}"
        ) from exc


def _torchvision(name: str, kwargs: dict[str, Any], spec: str) -> Any:
    try:
        import torchvision.models as tvm
    except Exception as exc:  # no build for this platform fails with more than ImportError
        raise SpecError(f"torchvision is not usable here ({type(exc).__name__}: {exc})") from exc
    for key in ("weights", "pretrained"):
        if kwargs.get(key) not in (None, False):
            raise SpecError(
                f"model spec {spec!r}: {key}={kwargs[key]!r} would download weights; "
                "give a trained state_dict with --weights PATH instead"
            )
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights", "pretrained")}
    try:
        builder = tvm.get_model_builder(name)
    except ValueError as exc:
        raise SpecError(f"torchvision has no model {name!r}") from exc
    return _invoke(lambda **kw: builder(weights=None, **kw), f"torchvision {name}", kwargs, spec)


def _timm(name: str, kwargs: dict[str, Any], spec: str) -> Any:
    if kwargs.pop("pretrained", False) is not False:
        raise SpecError(
            f"model spec {spec!r}: pretrained=True would download weights; give a trained "
            "state_dict with --weights PATH instead"
        )
    try:
        import timm
    except Exception as exc:
        raise SpecError(f"timm is not usable here ({type(exc).__name__}: {exc})") from exc
    if not timm.is_model(name):
        raise SpecError(f"timm has no model {name!r}")
    return _invoke(
        lambda **kw: timm.create_model(name, pretrained=False, **kw), f"timm {name}", kwargs, spec
    )


#: Where a training checkpoint keeps the model's state_dict.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 4  # keys named in a mismatch message, per kind


def load_weights(model: Any, path: str | Path, spec: str = "the model") -> None:
    """Load a state_dict file into ``model`` (``strict=True``).

    Args:
        model: the ``nn.Module`` to fill.
        path: a ``torch.save`` file: a state_dict, a checkpoint dict holding one under
            ``state_dict``, ``model_state_dict`` or ``model``, or a whole module. A
            ``module.`` (DistributedDataParallel) or ``_orig_mod.`` (torch.compile)
            prefix on every key is dropped. Read with ``weights_only=True``; only a
            file that needs more (a pickled module or object) is read in full, with a
            note on stderr, as it can run code.
        spec: how the model is named in messages.

    Raises:
        SpecError: the file is missing or unreadable, holds no state_dict, or does not
            fit ``model``: one line naming the first missing, unexpected and
            differently shaped entries.
    """
    import torch

    shown = str(path)
    path = input_file(path, "weights file", kind="a state_dict file", error=SpecError)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_exc:
        try:
            blob = unpickle_file(path)
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(_unloadable_weights(path, shown, safe_exc, exc)) from None
        print(
            f"note: weights {shown} hold more than tensors, so they were read with "
            "weights_only=False (this runs code from the file); save model.state_dict() "
            "to avoid it",
            file=sys.stderr,
        )
    state = _state_dict_of(blob, shown)
    _check_fit(model, state, shown, spec)
    model.load_state_dict(state, strict=True)


def _unloadable_weights(path: Path, shown: str, safe_exc: Exception, exc: Exception) -> str:
    """Why weights that neither load of ``torch.load`` reads cannot be read, in one line.

    A file whose safe load stops at a class (a pickled object: most often a whole module
    saved with ``torch.save(model)``) and whose full load cannot import that class names
    the class and the import error; any other file names the error of the safe load.
    """
    safe = re.sub(r"\x1b\[[0-9;]*m", "", str(safe_exc))  # torch's message has ANSI bold
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", safe)
    if found and isinstance(exc, (ImportError, AttributeError)):
        what = (
            f"a whole module ({found.group(1)}) saved with torch.save(model)"
            if _pickles_module(path)
            else f"a pickled {found.group(1)}"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (
            f"weights {shown} hold {what}, not a state_dict, and its class cannot be "
            f"imported here: {type(exc).__name__}: {first}; save model.state_dict() instead"
        )
    first = safe.strip().splitlines()[0] if safe.strip() else ""
    return f"weights {shown} are not a file saved with torch.save: {type(safe_exc).__name__}: {first}"  # fmt: skip


def _pickles_module(path: Path) -> bool:
    """Whether a ``torch.save`` archive pickles an ``nn.Module`` (whose state holds
    ``_modules`` and ``_parameters``), read without unpickling anything."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            data = archive.read(names[0]) if names else b""
    except (OSError, zipfile.BadZipFile):
        return False
    return b"_modules" in data and b"_parameters" in data


def _state_dict_of(blob: Any, shown: str) -> dict[str, Any]:
    import torch
    import torch.nn as nn

    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    if isinstance(blob, Mapping) and not all(isinstance(v, torch.Tensor) for v in blob.values()):
        for key in _CHECKPOINT_KEYS:
            inner = blob.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping):
                blob = inner
                break
        else:
            keys = ", ".join(map(str, list(blob)[:8]))
            raise SpecError(
                f"weights {shown} hold a dict without a state_dict: no tensors at the top and "
                f"none of {', '.join(_CHECKPOINT_KEYS)} (its keys: {keys})"
            )
    if not isinstance(blob, Mapping) or not blob:
        raise SpecError(f"weights {shown} hold a {type(blob).__name__}, not a state_dict")
    state = dict(blob)
    for prefix in ("module.", "_orig_mod."):
        if all(str(k).startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _check_fit(model: Any, state: Mapping[str, Any], shown: str, spec: str) -> None:
    import torch

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"shape of {k} is {tuple(own[k].shape)} here, {tuple(v.shape)} in the file"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("", shapes)):
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            sep = "; " if not label else ", "
            parts.append((f"{label} " if label else "") + sep.join(items[:_SHOWN]) + more)
    if parts:
        raise SpecError(f"weights {shown} do not fit {spec}: " + "; ".join(parts))


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


def random_input(
    shape: tuple[int, ...], *, device: Any = "cpu", dtype: Any = None, generator: Any = None
) -> Any:
    """``torch.randn(*shape)``, with an input too large to allocate a :class:`ShapeError`.

    Raises:
        ShapeError: an input of this shape does not fit in memory (or in a tensor).
    """
    import torch

    dtype = dtype or torch.float32
    try:
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        gib = math.prod(shape) * dtype.itemsize / 2**30
        raise ShapeError(
            f"an input of shape {tuple(shape)} ({gib:.3g} GiB) cannot be allocated on "
            f"{device}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def example_input(model: Any, shape: tuple[int, ...]) -> Any:
    """A random input of ``shape`` on the model's device, checked by one forward pass.

    Raises:
        ShapeError: the model does not accept an input of this shape, or an input of
            this shape does not fit in memory.
    """
    import torch

    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = random_input(shape, device=device, dtype=dtype)
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise ShapeError(
            f"the model does not accept an input of shape {tuple(shape)}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return x

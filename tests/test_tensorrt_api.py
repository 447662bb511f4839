"""Every TensorRT name the project uses exists in the real bindings of TensorRT 10 and 11.

TensorRT cannot run on the CPU machines that run this suite, so the code that calls it
(the modules of ``lut_builder/backends/tensorrt/`` and any other module that imports
``tensorrt``) is checked against the bindings themselves: the
``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings`` wheels on PyPI carry
``tensorrt.so``, whose string table names every class, method, property and enum member
the Python API exposes. The wheels (about 1.3 MB each) are downloaded once with
``pip download --no-deps`` into ``$HALP_TRT_CACHE`` (default ``~/.cache/halp-trt``); the
test is skipped, saying why, when they cannot be fetched.

What is checked:

- every attribute name used in a TensorRT module (``trt.X.Y`` chains, methods on
  builders, networks, engines, contexts, ``getattr`` strings) is in every checked
  version's bindings, unless it is a declared non-TensorRT name (:data:`NOT_TENSORRT`,
  methods of torch streams and tensors, pathlib, ...); a new name must be one or the other;
- a name present in only one major version is used only inside functions whose names
  end in ``_trt10`` / ``_trt11`` (the version branches of ``trt_compat``), and names used
  there exist in that version.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("halp_trt", "lut_builder", "bench")

#: (package, version, major). The oldest and newest release of each supported major.
WHEELS = (
    ("tensorrt-cu12-bindings", "10.0.1", 10),
    ("tensorrt-cu12-bindings", "10.16.1.11", 10),
    ("tensorrt-cu13-bindings", "11.0.0.114", 11),
    ("tensorrt-cu13-bindings", "11.4.0.106", 11),
)

#: Attribute names used in the TensorRT modules that belong to torch, numpy, pathlib or
#: Python itself and are not in TensorRT's string table. Keep it minimal: a name listed
#: here is never checked against the bindings.
NOT_TENSORRT = frozenset(
    {
        "astype",  # numpy
        "cuda_stream",  # torch.cuda.Stream
        "data_ptr",  # torch.Tensor
        "elapsed_time",  # torch.cuda.Event
        "half",  # torch.nn.Module, torch.Tensor
        "record",  # torch.cuda.Event
        "replay",  # torch.cuda.CUDAGraph
        "standard_normal",  # numpy.random.Generator
        "synchronize",  # torch.cuda.Stream / Event
    }
)

#: Methods of Python's own types (str, list, dict, pathlib.Path, ...): never checked.
PYTHON_NAMES = frozenset(
    n
    for t in (str, bytes, list, dict, set, tuple, Path, re.Match, io.BufferedWriter)
    for n in dir(t)
    if not n.startswith("_")
)

#: Modules whose attribute chains are never TensorRT's.
NON_TRT_ROOTS = frozenset(
    {"torch", "np", "numpy", "os", "re", "math", "json", "time", "Path", "copy", "tempfile"}
)

VERSION_SUFFIXES = {"_trt10": 10, "_trt11": 11}


# --- what the project uses ------------------------------------------------------------


def _uses_tensorrt(tree: ast.AST) -> bool:
    """The module calls TensorRT: it calls ``import_tensorrt``, or imports ``tensorrt`` and
    reads attributes of it. A bare ``import tensorrt`` that only probes whether TensorRT is
    installed uses no API."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
        from_trt = isinstance(node, ast.ImportFrom) and node.module == "tensorrt"
        loader = (isinstance(node, ast.Name) and node.id == "import_tensorrt") or (
            isinstance(node, ast.Attribute) and node.attr == "import_tensorrt"
        )
        if from_trt or loader:
            return True
    return any(
        isinstance(node, ast.Attribute) and _chain_root(node) in bound for node in ast.walk(tree)
    )


def tensorrt_modules() -> list[Path]:
    """Project source files that use TensorRT."""
    found = []
    for d in SOURCE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            if _uses_tensorrt(ast.parse(path.read_text(), str(path))):
                found.append(path)
    return found


def _chain_root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Call):
        return _chain_root(node.func)
    return node.id if isinstance(node, ast.Name) else None


def _own_names(tree: ast.AST) -> set[str]:
    """Names the module defines itself: classes, functions, ``self.X`` attributes."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            own.add(node.target.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and isinstance(node.ctx, ast.Store)
        ):
            own.add(node.attr)
    return own


def project_names() -> frozenset[str]:
    """Names ``lut_builder`` defines (functions, classes, fields, attributes)."""
    own: set[str] = set()
    for path in (ROOT / "lut_builder").rglob("*.py"):
        own |= _own_names(ast.parse(path.read_text(), str(path)))
    return frozenset(own)


def used_names(path: Path) -> list[tuple[str, str | None, int, bool]]:
    """``(name, enclosing top-level function or None, line, own)`` per possible TensorRT name.

    Chains rooted at torch, numpy and the standard library, and methods of Python's own
    types, are left out, and so are the project's own attributes of ``self``. ``own`` marks names that ``lut_builder`` also defines itself
    (``sig.in_hw``, ``trt_compat.X``, ``settings.opt_level``): such a name may still be
    TensorRT's (``config.max_aux_streams``), so it is checked unless no TensorRT version
    has it.
    """
    tree = ast.parse(path.read_text(), str(path))
    own = _own_names(tree) | project_names()
    uses: list[tuple[str, str | None, int, bool]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and func is None:
            func = node.name
        if isinstance(node, ast.Attribute):
            attr = node.attr
            on_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            if (
                not (on_self and attr in own)
                and _chain_root(node) not in NON_TRT_ROOTS
                and attr not in PYTHON_NAMES
                and not attr.startswith("__")
            ):
                uses.append((attr, func, node.lineno, attr in own))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _chain_root(node.args[0]) not in NON_TRT_ROOTS
        ):
            uses.append((node.args[1].value, func, node.lineno, False))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return uses


def version_of(func: str | None) -> int | None:
    for suffix, major in VERSION_SUFFIXES.items():
        if func and func.endswith(suffix):
            return major
    return None


# --- what the bindings have -----------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("HALP_TRT_CACHE", Path.home() / ".cache" / "halp-trt"))


def _download(package: str, version: str, dest: Path) -> Path | None:
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    hits = sorted(dest.glob(pattern))
    if hits:
        return hits[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.11", "--implementation", "cp",
        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
        "--disable-pip-version-check", "--timeout", "20", "--retries", "1", "-q",
        "-d", str(dest), f"{package}=={version}",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    hits = sorted(dest.glob(pattern))
    return hits[0] if hits else None


_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


class BindingNames:
    """Identifier-like strings of a wheel's ``tensorrt.so`` and ``__init__.py``.

    ``name in names`` holds when the name is a whole NUL-terminated string of the library,
    or the tail of one that is itself an identifier: the linker stores a string that ends
    another only once, so ``INT8`` lives inside ``UINT8`` and ``serialize`` inside
    ``deserialize``. Prose (docstrings) is never split into words, so ``"... CHW2 + FP16"``
    does not make ``FP16`` exist.
    """

    def __init__(self, whole: set[str]) -> None:
        self.whole = frozenset(whole)
        self._blob = "\n" + "\n".join(sorted(self.whole)) + "\n"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.whole or f"{name}\n" in self._blob)


def binding_names(wheel: Path) -> BindingNames:
    """The :class:`BindingNames` of a bindings wheel."""
    names: set[str] = set()
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".so"):
                data = zf.read(info)
                names.update(m.decode() for m in re.findall(rb"(?<=\0)[A-Za-z_]\w*(?=\0)", data))
            elif info.filename.endswith("__init__.py"):
                names.update(m.decode() for m in _IDENT.findall(zf.read(info)))
    return BindingNames(names)


@pytest.fixture(scope="module")
def bindings() -> dict[tuple[str, int], BindingNames]:
    found = {}
    missing = []
    for package, version, major in WHEELS:
        wheel = _download(package, version, cache_dir() / "wheels")
        if wheel is None:
            missing.append(f"{package}=={version}")
            break  # the index is unreachable: do not wait for every other wheel too
        found[(version, major)] = binding_names(wheel)
    if missing:
        pytest.skip(
            f"cannot fetch the TensorRT bindings wheels {', '.join(missing)} from the package "
            "index (offline?); the TensorRT API names were not checked"
        )
    return found


# --- tests ----------------------------------------------------------------------------


def test_tensorrt_code_is_where_the_guard_looks():
    modules = {p.relative_to(ROOT).as_posix() for p in tensorrt_modules()}
    trt = "lut_builder/backends/tensorrt"
    assert f"{trt}/trt_compat.py" in modules
    assert f"{trt}/measurer.py" in modules
    # Everything else goes through the TensorRT backend package's functions, never to
    # TensorRT objects itself, so its modules are all there is to check.
    assert modules == {f"{trt}/{m}.py" for m in ("trt_compat", "session", "measurer", "runner")}


def test_binding_names_reads_whole_strings_and_identifier_tails(tmp_path):
    so = b"\0".join([b"", b"BuilderFlag", b"UINT8", b"Example: CHW2 + FP16", b"set_flag", b""])
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/tensorrt.so", so)
        zf.writestr("pkg/__init__.py", "__version__ = '1.0'\ndef nptype(t): ...\n")
    names = binding_names(wheel)
    for name in ("BuilderFlag", "UINT8", "INT8", "set_flag", "flag", "nptype"):
        assert name in names
    for name in ("FP16", "CHW2", "Builder", "set"):
        assert name not in names


def test_collects_trt_chains_methods_and_getattr_strings(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import torch\n"
        "def f(trt, builder):\n"
        "    c = builder.create_builder_config()\n"
        "    torch.cuda.synchronize()\n"
        "    return trt.BuilderFlag.FP16, getattr(trt, 'OnnxParser')\n"
        "def g_trt11(trt):\n"
        "    return trt.X\n"
    )
    uses = used_names(src)
    names = {(n, f) for n, f, _, _ in uses}
    assert {("create_builder_config", "f"), ("BuilderFlag", "f"), ("FP16", "f")} <= names
    assert ("OnnxParser", "f") in names and ("X", "g_trt11") in names
    assert not {n for n, _ in names} & {"cuda", "synchronize"}
    assert version_of("g_trt11") == 11 and version_of("f") is None


def test_every_tensorrt_name_exists_in_the_bindings(bindings):
    majors = sorted({m for _, m in bindings})
    assert majors == [10, 11]
    problems = []
    uses = [(p, *u) for p in tensorrt_modules() for u in used_names(p)]
    assert len(uses) > 30  # the scan found the code
    for path, name, func, line, own in uses:
        where = f"{path.relative_to(ROOT)}:{line} {name!r}"
        have = {v: name in names for (v, _), names in bindings.items()}
        by_major = {m: all(have[v] for (v, mm) in bindings if mm == m) for m in majors}
        if name in NOT_TENSORRT or (own and not any(have.values())):
            continue
        only = version_of(func)
        if only is not None:
            if not by_major[only]:
                problems.append(f"{where} is on the TensorRT {only} path but missing there")
        elif not all(by_major.values()):
            lacking = [v for v, ok in have.items() if not ok]
            problems.append(
                f"{where} is missing from TensorRT {', '.join(lacking)}: use it only in a "
                "_trt10/_trt11 function, or list it in NOT_TENSORRT if it is not TensorRT's"
            )
    assert not problems, "\n".join(problems)


def test_declared_non_tensorrt_names_are_used_and_absent_from_tensorrt(bindings):
    used = {n for p in tensorrt_modules() for n, _, _, _ in used_names(p)}
    stale = NOT_TENSORRT - used
    assert not stale, f"NOT_TENSORRT lists names no longer used: {sorted(stale)}"
    everywhere = frozenset.intersection(*(n.whole for n in bindings.values()))
    shadowing = NOT_TENSORRT & everywhere
    assert not shadowing, f"NOT_TENSORRT hides names TensorRT has: {sorted(shadowing)}"


def test_version_branches_use_what_sets_the_versions_apart(bindings):
    """The known 10/11 differences hold in the bindings, so the branches are needed."""
    v10 = [n for (_, m), n in bindings.items() if m == 10]
    v11 = [n for (_, m), n in bindings.items() if m == 11]
    assert all("EXPLICIT_BATCH" in n and "FP16" in n for n in v10)
    assert not any("EXPLICIT_BATCH" in n or "FP16" in n for n in v11)
    assert all("STRONGLY_TYPED" in n for n in v10 + v11)

"""Run the command lines in a fresh process each, without paying for ``import torch`` each time.

Most of the suite's command-line tests are bad input: a command that stops in one line
after a fraction of a second of its own work, behind two to three seconds of importing
torch and onnx and tearing them down. A server process imports them once and runs
nothing else (no torch op, so torch's thread pool does not exist yet; numpy's BLAS and
onnxruntime start idle threads at import, which a fork leaves behind, as
:mod:`multiprocessing`'s fork start method does) and forks a child per command; the
child takes the command's working directory, environment, argv and ``sys.path[0]`` as
``python -m MODULE`` would, writes its stdout and stderr to files, runs the module as
``__main__`` with :mod:`runpy`, runs the ``atexit`` handlers and exits with the command's
code. What a fresh interpreter does and a child does not: import the preloaded modules
again (an import-time warning would be printed once, in the server, where it goes
nowhere; ``tests/test_imports.py`` runs commands cold to catch that) and finalise
them at exit; on an uncaught Ctrl-C a child dies by SIGINT without running the
``atexit`` handlers (the interrupt tests run cold).

``HALP_TRT_TESTS_COLD=1`` runs every command in a plain ``subprocess`` instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Imported once by the server; each is a few tenths of a second to seconds of import.
PRELOAD = ("torch", "onnx", "onnxruntime", "halp_trt.cli", "lut_builder.cli")


def _child(request: dict) -> None:
    """In the forked child: become ``python -m MODULE ARGS`` and never return."""
    import atexit
    import runpy
    import traceback

    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, path in ((1, request["out"]), (2, request["err"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        # `python -m` puts the working directory first on the path, then PYTHONPATH.
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[0:1] = [os.getcwd(), *extra]
        for entry in extra:  # what `site` would have run from PYTHONPATH
            hook = Path(entry) / "sitecustomize.py"
            if hook.is_file():
                runpy.run_path(str(hook))
        sys.argv = [request["module"], *request["args"]]
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            if stop.code is None:
                code = 0
            elif isinstance(stop.code, int):
                code = stop.code
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def serve() -> None:
    """The server: preload, then fork a child per request line on stdin; answer on stdout
    with ``{"pid": N}`` when it starts and ``{"rc": N}`` when it ends (negative: killed by
    that signal, as :mod:`subprocess` reports it)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    requests = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for name in PRELOAD:
        __import__(name)
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _child(request)
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        replies.write(json.dumps({"rc": rc}) + "\n")


class WarmRunner:
    """The test side: starts :func:`serve` on first use, one command at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._scratch = Path(tempfile.mkdtemp(prefix="halp-trt-warm-"))
        self._pending = b""

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            code = f"import sys; sys.path[0] = {str(ROOT)!r}; from tests.warm_cli import serve; serve()"
            with (self._scratch / "server.err").open("w") as log:  # the child keeps its own
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", code],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            self._pending = b""
            if self._reply(300) is None:
                raise RuntimeError("the command server did not start in 300 s")
        return self._proc

    def _reply(self, timeout: float) -> dict | None:
        """The server's next line, or None once ``timeout`` seconds have passed."""
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                log = (self._scratch / "server.err").read_text()[-2000:]
                raise RuntimeError(f"the command server exited ({self._proc.wait()}): {log}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def run(
        self,
        module: str,
        args: Sequence[str],
        cwd: Path,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``python -m MODULE ARGS`` in ``cwd``; raises :class:`subprocess.TimeoutExpired`
        (after killing it) as :func:`subprocess.run` would."""
        argv = [sys.executable, "-m", module, *map(str, args)]
        if os.environ.get("HALP_TRT_TESTS_COLD"):
            return subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
            )
        with self._lock:
            proc = self._start()
            out, err = self._scratch / "stdout", self._scratch / "stderr"
            request = {
                "module": module,
                "args": argv[3:],
                "cwd": str(Path(cwd).resolve()),
                "env": dict(os.environ if env is None else env),
                "out": str(out),
                "err": str(err),
            }
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            pid = self._reply(60)["pid"]
            reply = self._reply(timeout)
            if reply is None:
                os.kill(pid, signal.SIGKILL)
                self._reply(60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess(argv, reply["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc.stdout.close()
        for path in self._scratch.iterdir():
            path.unlink()
        self._scratch.rmdir()

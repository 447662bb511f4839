"""A progress bar for table builds, shared by ``lut-builder build`` and ``halp-trt run``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def measuring_bar(label: str, *, show: bool = True) -> Iterator[dict[str, Callable[..., Any]]]:
    """A rich progress bar on stderr for :func:`lut_builder.build_table`, shown once
    measuring starts (a complete table shows none).

    Args:
        label: what is measured (``"resnet20 on onnxruntime"``).
        show: False yields no callbacks: nothing is drawn.

    Yields:
        ``build_table``'s ``on_start`` and ``progress`` keywords, to pass as ``**bar``.
    """
    if not show:
        yield {}
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]measuring[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task(label, total=None)

    def on_start(total: int) -> None:
        bar.update(task, total=total)
        bar.start()

    try:
        yield {
            "on_start": on_start,
            "progress": lambda done, total: bar.update(task, completed=done),
        }
    finally:
        bar.stop()

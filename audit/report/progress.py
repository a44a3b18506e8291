"""Progress display while hidden states are extracted: a rich bar on a terminal,
nothing in CI logs (the report states tokens per second either way)."""

from __future__ import annotations

from typing import Any


class RichProgress:
    """Implements :class:`audit.pipeline.Progress` with a rich progress bar."""

    def __init__(self, console: Any = None) -> None:
        self._console = console
        self._progress: Any = None
        self._task: Any = None

    def start(self, name: str, total_tokens: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]audit {task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("tokens"), TimeRemainingColumn(), console=self._console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(name, total=total_tokens)

    def advance(self, tokens: int) -> None:
        self._progress.advance(self._task, tokens)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

"""Progress bars for long work: a rich bar in a terminal; in a log (CI, nohup) a plain line every 30 s and at
the end, since rich draws nothing there until the work is done."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.2f}/s")


class Bar:
    """`with Bar("eval", total=n, note="") as bar: bar.update(done, note="loss 0.3")`."""

    def __init__(self, description: str, total: int | None = None, note: str = "", every_s: float = 30.0):
        self.console = Console(stderr=True)
        self.description, self.every_s, self.last = description, every_s, 0.0
        columns = [TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                   TextColumn("{task.fields[note]}"), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=self.console)
        self.task = self.progress.add_task(description, total=total, note=note)

    def update(self, completed: int | None = None, *, total: int | None = None, advance: int = 0,
               note: str | None = None) -> None:
        fields = {"note": note} if note is not None else {}
        self.progress.update(self.task, completed=completed, total=total, advance=advance, **fields)
        if not self.console.is_terminal and time.monotonic() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        task = self.progress.tasks[0]
        eta = f", ~{task.time_remaining / 60:.0f} min left" if task.time_remaining else ""
        self.console.print(f"{self.description}: {task.completed:.0f}/{task.total or '?'} "
                           f"{task.fields['note']}{eta}", highlight=False)
        self.last = time.monotonic()

    def __enter__(self) -> "Bar":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if not self.console.is_terminal:
            self._line()

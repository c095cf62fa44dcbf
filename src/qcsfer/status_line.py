"""One progress line rewritten in place on a terminal: training's epoch line and predict's
`[i/n] file` line both use it. Where stderr is a pipe or a log file it writes nothing (no
carriage returns in logs); callers log there instead if they want to.
"""

from __future__ import annotations

import sys
from typing import IO

WIDTH = 120  # longer lines are cut: a wrapped line cannot be rewritten in place


class StatusLine:
    def __init__(self, enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self._width = 0  # of the line on screen; 0: none

    def show(self, text: str) -> None:
        """Replace the line on screen with `text`."""
        if not self.enabled:
            return
        line = text[:WIDTH]
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        """Erase the line (before other output is written)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def end(self) -> None:
        """Keep the line on screen and move below it."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

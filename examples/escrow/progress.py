"""A one-line progress bar on stderr, with no dependency.

On a terminal the line redraws itself in place (``\\r``); into a file or a pipe it
writes a plain line every few seconds instead, so a CI log stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    def __init__(self, total: int, *, stream: TextIO = sys.stderr, width: int = 30,
                 # Seconds between plain lines when the stream is not a terminal.
                 plain_interval: float = 5.0) -> None:
        self.total = max(1, total)
        self.stream = stream
        self.width = width
        self.plain_interval = plain_interval
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_plain = 0.0
        self._last_text = ""

    def update(self, done: int, status: str) -> None:
        filled = min(self.width, int(self.width * done / self.total))
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {done}/{self.total} {status}"
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self._last_text)))
            self.stream.flush()
            self._last_text = text
        elif time.monotonic() - self._last_plain >= self.plain_interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_plain = time.monotonic()

    def note(self, text: str) -> None:
        """A line of its own above the bar."""
        if self.tty:
            self.stream.write("\r" + " " * len(self._last_text) + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.tty and self._last_text:
            self.stream.write(self._last_text)
            self.stream.flush()

    def close(self, done: int, status: str) -> None:
        self._last_plain = 0.0
        self.update(done, status)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

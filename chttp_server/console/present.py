"""How the console's templates show things: the Jinja2 environment and its filters.

Autoescaping is on for every template, whatever its name: ids, scopes, header values,
bodies, URLs and recorded errors all come from the database, which holds whatever
clients sent. Nothing is ever marked safe here; the one piece of markup built outside a
template, the chart, is geometry rendered by ``chart.html`` like everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["BodyPreview", "preview_body", "make_environment", "when", "ago"]

#: Characters of a body shown as text (the rest is cut, with a note saying so).
PREVIEW_CHARS = 2000


@dataclass(frozen=True)
class BodyPreview:
    """A stored body for display: text if it decodes as UTF-8, else a hex dump."""

    text: str | None
    hexdump: str | None
    shown_bytes: int
    size: int

    @property
    def truncated(self) -> bool:
        return self.shown_bytes < self.size


def preview_body(head: bytes, size: int) -> BodyPreview:
    """Preview ``head``, the first bytes of a body of ``size`` bytes."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 3 and len(head) < size:
            # Only a multi-byte character cut at the end of the preview.
            text = head[:error.start].decode("utf-8")
        else:
            text = None
    if text is not None and "\x00" not in text:
        shown = text[:PREVIEW_CHARS]
        return BodyPreview(text=shown, hexdump=None,
                           shown_bytes=len(shown.encode("utf-8")), size=size)
    sample = head[:512]
    lines = [f"{offset:06x}  {sample[offset:offset + 16].hex(' ')}"
             for offset in range(0, len(sample), 16)]
    return BodyPreview(text=None, hexdump="\n".join(lines), shown_bytes=len(sample), size=size)


def when(moment: datetime | None) -> str:
    """A UTC timestamp to the second, as operators compare it with logs."""
    if moment is None:
        return "–"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def ago(moment: datetime | None, now: datetime) -> str:
    """``moment`` relative to ``now``: "3 min ago", "in 14 d"."""
    if moment is None:
        return ""
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            break
    else:
        amount = f"{int(seconds)} s"
    return f"in {amount}" if future else f"{amount} ago"


def make_environment() -> Any:
    """The templates of this package, autoescaped, strict about undefined names."""
    try:
        import jinja2
    except ImportError as error:  # pragma: no cover - the extra is part of `testing`
        from chttp_server.errors import ConfigurationError

        raise ConfigurationError(
            "the console needs Jinja2, which comes with the 'console' extra: "
            "pip install -e '.[console]' in the certified-http checkout") from error
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("chttp_server.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["when"] = when
    return environment

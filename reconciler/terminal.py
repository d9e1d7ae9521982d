"""How text output looks on a terminal: colour for people, nothing for pipes.

render.py produces plain text; this colours it at the very edge, line by line, so that
files, pipes, CI logs and tests see exactly the plain text. Colour is on when stdout is a
TTY and NO_COLOR (no-color.org) is not set; SLIPSTREAM_COLOR=always|never overrides.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

import click

_CHANGE = re.compile(r"^(\s*)(-/\+|\+|-|~|\.|!)( )")
_COLOURS = {"+": "green", "-/+": "yellow", "-": "red", "~": "cyan", ".": "bright_black",
            "!": "red"}
_STATES = {"in-sync": "green", "unmanaged": "bright_black", "invalid": "red",
           "failed-replace": "red", "stalled": "red", "blocked": "red"}
_STATE = re.compile(r"\b(in-sync|unmanaged|invalid|failed-replace|stalled|blocked|"
                    r"pending-[a-z]+)\b")


def colour_enabled(stream: TextIO | None = None) -> bool:
    choice = os.environ.get("SLIPSTREAM_COLOR", "auto").lower()
    if choice == "never":
        return False
    if choice == "always":
        return True
    if os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


# Names and reasons can come from the node: an escape sequence in one must not reach a
# terminal (C0 and C1 control characters but newline and tab become '?').
_CONTROLS = {c: "?" for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))
             if c not in (0x09, 0x0A)}


def safe(text: str) -> str:
    return text.translate(_CONTROLS)


def paint(text: str, enabled: bool | None = None) -> str:
    """The text made safe for a terminal, coloured when colour is on."""
    text = safe(text)
    if not (colour_enabled() if enabled is None else enabled):
        return text
    return "\n".join(_paint_line(line) for line in text.split("\n"))


def _paint_line(line: str) -> str:
    change = _CHANGE.match(line)
    if change:
        symbol = change.group(2)
        line = line.replace(" ok: ", " " + click.style("ok:", fg="green") + " ", 1)
        line = line.replace(" FAILED: ", " " + click.style("FAILED:", fg="red", bold=True)
                            + " ", 1)
        return change.group(1) + click.style(symbol, fg=_COLOURS[symbol], bold=True) + \
            line[change.end(2):]
    if line.startswith(("Plan:", "Apply complete:", "No changes.", "== ")):
        return click.style(line, bold=True)
    if line.startswith(("error:", "Blocked:")):
        return click.style(line, fg="red")
    if line.startswith("warning:"):
        return click.style(line, fg="yellow")
    state = _STATE.search(line)
    if state and not line.startswith(("NAME", "node ")):
        colour = _STATES.get(state.group(1), "yellow")
        return line[:state.start()] + click.style(state.group(1), fg=colour) + \
            line[state.end():]
    return line

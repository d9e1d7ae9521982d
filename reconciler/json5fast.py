"""A fast path for the JSON5 that plugin configs are written in.

The json5 package is the reference, but it parses in pure Python at about a millisecond
per small file; the C json parser takes a microsecond. Most configs use only a little of
JSON5: comments, unquoted keys, trailing commas, single-quoted strings. translate()
rewrites exactly that subset into JSON and returns None for anything else (hexadecimal,
Infinity, NaN, leading '+' or '.', escapes JSON does not have, line continuations, …),
so the caller falls back to json5. Errors are never reported from here: a document that
does not translate or does not load goes to json5, whose messages carry line and column.

tests/test_json5fast.py holds the translation to json5's own results on generated
documents. One deliberate difference: an escaped surrogate pair decodes to one character,
as JSON and the node's serde decode it, where the json5 package leaves two lone
surrogates (which would not even survive UTF-8).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n\ufeff]+)
  | (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<dstring>"(?:[^"\\\x00-\x1f\u2028\u2029]|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})*")
  | (?P<sstring>'[^'"\\\x00-\x1f\u2028\u2029]*')
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![0-9A-Za-z_$.+]))
  | (?P<ident>[A-Za-z_$][A-Za-z0-9_$]*)
  | (?P<punct>[{}\[\]:,])
""", re.VERBOSE | re.DOTALL)

_LITERALS = {"true", "false", "null"}


def translate(text: str) -> str | None:
    """JSON with the same meaning as `text`, or None when unsure."""
    out: list[str] = []
    significant: list[str] = []  # the kinds of the significant tokens emitted so far
    position, end = 0, len(text)
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            return None
        kind, value = match.lastgroup, match.group()
        position = match.end()
        if kind in ("ws", "line_comment", "block_comment"):
            out.append(" ")  # still a separator: "1 0" must not become 10
            continue
        if kind == "punct" and value in "}]" and significant and significant[-1] == ",":
            if len(significant) < 2 or significant[-2] in ("[", "{", ",", ":"):
                return None  # an elision, not a trailing comma: json5 rejects it
            while out[-1] == " ":
                out.pop()
            out.pop()  # a trailing comma
            significant.pop()
        if kind == "sstring":
            value = '"' + value[1:-1] + '"'
        elif kind == "ident":
            if _next_significant(text, position) == ":":
                value = '"' + value + '"'
            elif value not in _LITERALS:
                return None  # Infinity, NaN, or not JSON5 at all: json5 decides
        out.append(value)
        significant.append(value if kind == "punct" else kind)
    return "".join(out)


def _next_significant(text: str, position: int) -> str:
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            return text[position]
        if match.lastgroup not in ("ws", "line_comment", "block_comment"):
            return match.group()[0]
        position = match.end()
    return ""


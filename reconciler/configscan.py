"""Why the node refuses a config: its lexical grammar, token by token.

configparse checks a whole document in one pass with one expression (every token in a
form pyjson5 and the node read alike); only a document that fails that check comes here,
to find the first token the node refuses and name the node's rule (rules: configparse's
docstring). A separate module so that its expressions are compiled, and its value class
made, only for such a document: most configs never need it, and a command's start-up
pays for every expression and dataclass it imports (docs/performance.md).

Pure: no I/O.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass

from reconciler.json5chars import HEX, LT, WS

_SKIP = re.compile(rf"(?:[{WS}]++|//[^{LT}]*+|(?>/\*(?s:.)*?\*/))++")
_STRING_BODY = {
    q: re.compile(rf"(?>[^{q}\\{LT}]++|\\(?>\r\n|x{HEX}{{2}}|u{HEX}{{4}}|[^1-9xu]))*+")
    for q in "\"'"}
_NUMBER = re.compile(
    rf"([+-]?)(?:(0[xX]{HEX}+)|((?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?"
    rf"|\.[0-9]+(?:[eE][+-]?[0-9]+)?)|(?<=[+-])(Infinity|NaN))")
_WORD = re.compile(rf"(?:\\u{HEX}{{4}}|[^{WS}{{}}\[\]:,/\"'\\+\-.])++")
_ENDS_WORD = re.compile(rf"[{WS},:\]}}/{{\[\"']|\Z")
_COMPONENT = re.compile(rf"\\(?:\r\n|[{LT}])|\\u({HEX}{{4}})|\\x{HEX}{{2}}|\\.|.", re.S)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_I64 = (-(1 << 63), (1 << 63) - 1)
_ID_START = frozenset(("Lu", "Ll", "Lt", "Lm", "Lo", "Nl"))
_ID_PART = _ID_START | {"Mn", "Nd", "Pc"}


@dataclass(frozen=True)
class Refusal:
    """Why the node refuses a token. `named`: one of the node's own rules, worth showing
    over pyjson5's message; otherwise a token the node cannot read at all, where pyjson5's
    message (it knows the grammar around the token) is better when it has one."""
    message: str
    offset: int
    named: bool = True


def first_refusal(text: str) -> Refusal | None:
    """The first token the node refuses, or None."""
    pos, end = 0, len(text)
    while True:
        skipped = _SKIP.match(text, pos)
        if skipped:
            pos = skipped.end()
        if pos >= end:
            return None
        ch = text[pos]
        if ch in "{}[]:,":
            pos += 1
        elif ch in "\"'":
            refusal, pos = _scan_string(text, pos)
            if refusal:
                return refusal
        elif (number := _NUMBER.match(text, pos)) is not None:
            rule = _number_rule(number)
            if rule:
                return Refusal(rule, pos)
            pos = number.end()
            if not _ENDS_WORD.match(text, pos):
                if text[pos] == "_":
                    return Refusal("the node reads no '_' in numbers", pos)
                return Refusal(f"the node cannot read {text[pos]!r} right after a number",
                                pos, named=False)
        elif (word := _WORD.match(text, pos)) is not None:
            refusal = _word_rule(text, word)
            if refusal:
                return refusal
            pos = word.end()
        else:
            return Refusal(f"the node cannot read {ch!r} here", pos, named=False)


def _scan_string(text: str, start: int) -> tuple[Refusal | None, int]:
    quote = text[start]
    body = _STRING_BODY[quote].match(text, start + 1)
    assert body is not None  # a `*+` pattern matches, if only the empty string
    stop = body.end()
    ch = text[stop] if stop < len(text) else ""
    if ch in ("", "\n", "\r") or (ch == "\\" and stop + 1 == len(text)):
        return Refusal("unclosed string (a line break inside one must follow a '\\')",
                        start, named=False), stop
    if ch in "\u2028\u2029":
        return Refusal(f"the node refuses a raw U+{ord(ch):04X} inside a string; write it "
                        f"as \\u{ord(ch):04x}", stop), stop
    if ch != quote:  # a backslash starting no escape the node knows
        return Refusal(f"the node knows no escape {text[stop:stop + 2]!r} (of the digits "
                        "only \\0; \\x takes 2 hex digits, \\u 4)", stop, named=False), stop
    return _surrogate_rule(text, start + 1, stop), stop + 1


def _number_rule(number: re.Match[str]) -> str | None:
    """Which rule of json5 0.4's `parse_integer`/`parse_number` refuses this number."""
    sign, hex_digits, decimal, word = number.groups()
    if hex_digits is not None:
        if sign:
            return "the node reads hexadecimal numbers only without a sign"
        if int(hex_digits[2:], 16) > 0xFFFFFFFF:
            return "the node reads hexadecimal numbers only up to 0xFFFFFFFF (32 bits)"
        return None
    if word is not None:
        return f"the node reads {word} only without '+'" if sign == "+" else None
    if "." in decimal or "e" in decimal or "E" in decimal:
        if math.isinf(float(decimal)):
            return "the node reads numbers only up to about 1.8e308 (a 64-bit float)"
        return None
    digits = decimal.lstrip("0") or "0"
    value = int(digits) if len(digits) <= 20 else 1 << 70  # no int() of huge strings
    if sign == "-" and value > -_I64[0]:
        return "the node reads integers only down to -2^63 (-9223372036854775808)"
    if sign != "-" and value > _I64[1]:
        return "the node reads integers only up to 2^63-1 (9223372036854775807)"
    return None


def _word_rule(text: str, word: re.Match[str]) -> Refusal | None:
    """An unquoted key (or true/false/null/Infinity/NaN) checked character by character
    against json5.pest's `identifier`."""
    pos, end = word.start(), word.end()
    first = True
    while pos < end:
        if text.startswith("\\u", pos):
            pos += 6
        else:
            ch = text[pos]
            category = unicodedata.category(ch)
            if category == "Mc":
                return Refusal(f"the node reads no spacing mark (U+{ord(ch):04X}) in an "
                                "unquoted key; put the key in quotes", pos)
            allowed = _ID_START if first else _ID_PART
            if not (category in allowed or ch in "$_"
                    or (not first and ch in "\u200c\u200d")):
                return Refusal(f"the node cannot read {ch!r} here", pos, named=False)
            pos += 1
        first = False
    return _surrogate_rule(text, word.start(), end)


_LONE_LEAD = ("the node reads a \\uD800-\\uDBFF escape only followed by a \\uDC00-\\uDFFF "
              "escape (a lone surrogate is no character)")


def _surrogate_rule(text: str, start: int, end: int) -> Refusal | None:
    """json5 0.4's `parse_string_component`: a `\\uD800`-`\\uDBFF` escape takes the next
    component (a line continuation is none) and it must be a `\\uDC00`-`\\uDFFF` escape."""
    if not _SURROGATE_ESCAPE.search(text, start, end):
        return None
    lead: int | None = None
    for component in _COMPONENT.finditer(text, start, end):
        piece = component.group()
        if piece[0] == "\\" and piece[1] in LT:
            continue  # a line continuation
        code = int(component.group(1), 16) if component.group(1) else None
        if lead is not None:
            if code is None or not 0xDC00 <= code <= 0xDFFF:
                return Refusal(_LONE_LEAD, lead)
            lead = None
        elif code is not None and 0xDC00 <= code <= 0xDFFF:
            return Refusal("the node refuses a lone \\uDC00-\\uDFFF escape (a surrogate "
                            "pair starts with \\uD800-\\uDBFF)", component.start())
        elif code is not None and 0xD800 <= code <= 0xDBFF:
            lead = component.start()
    return None if lead is None else Refusal(_LONE_LEAD, lead)

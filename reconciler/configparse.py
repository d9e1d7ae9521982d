"""Config bytes parsed the way the node parses them.

The node reads each plugin config with the Rust `json5` crate 0.4 (a pest grammar,
`src/json5.pest`, and `src/de.rs`) into a `serde_json::Value`, then takes `libpath` and
`name` from it. If we accepted a file the node refuses, or read another value from it, we
would plan one plugin and the node would load another (or none). So `parse` accepts
exactly what that parser accepts, and returns what it returns, or raises ConfigSyntaxError
naming the node's rule with a line and column.

How: pyjson5 (compiled, complete JSON5) builds the value, under a nesting cap; a regular
expression checks in one pass that every token is one the node reads the same way, and
only when it does not (hex numbers, 19-digit integers, big exponents, surrogate escapes,
non-ASCII keys, raw U+2028 in strings...) a token-by-token scan finds and names the
node's rule. The node's rules on top of JSON5, each from json5 0.4:

- a `//` comment ends at `\\n`, `\\r`, U+2028 or U+2029 (pyjson5 agrees);
- numbers (`de.rs`): a number without `.`, `e` or `E` is an integer read by
  `str::parse::<i64>` — outside -2^63..2^63-1 it is refused (serde_json's u64 is never
  reached); hex goes through `u32::from_str_radix` — above 0xFFFFFFFF refused, and a
  signed hex (`-0x10`, `+0x10`) is neither hex nor decimal to it, refused; `+Infinity`
  and `+NaN` are not its spellings of infinity, refused; a float that parses to infinity
  (`1e400`) is refused as "too large"; `Infinity`, `-Infinity`, `NaN`, `-NaN` become
  null, as serde_json stores a non-finite f64;
- strings: a raw line terminator, U+2028 and U+2029 included, is refused inside a string
  (`char_literal`); `\\0` may be followed by a digit (`nul_escape_sequence`, unlike the
  spec); `\\uD800`-`\\uDBFF` must be followed by a `\\uDC00`-`\\uDFFF` escape and the pair
  is one character; any other surrogate escape is refused;
- unquoted keys: the node's identifier parts are letters, `$`, `_`, `\\uXXXX`,
  non-spacing marks (Mn), decimal digits, connector punctuation, ZWNJ, ZWJ and the
  Unicode *Diacritic* property — not the spacing marks (Mc) the spec allows;
- nesting: the node has no limit and overflows its 2 MiB worker stack near 2,000 nested
  objects, so we refuse anything past MAX_DEPTH levels (pyjson5's own cap, checked while
  it reads, so no deep text reaches a recursive parser).

Where we are stricter than the node (it would accept, we refuse with a message; we know
of no case the other way round, and tests/test_configparse.py fuzzes for one):
- a key with a *Diacritic* character that is not a JSON5 identifier character (`a^b`),
  or with a spacing mark (Mc) that is also Diacritic: Python has no Diacritic table;
- `\\uD83D` and `\\uDE00` separated by a line continuation (the node joins them);
- nesting deeper than MAX_DEPTH.
Not exact either way: letters in unquoted keys come from Python's Unicode tables, the
node's from pest's, which may be of another Unicode version.
Error positions from pyjson5 are its "near" offsets: right to the character for most
errors, a token early or late for a few.

Pure: no I/O.
"""

from __future__ import annotations

import math
import re

from reconciler.json5chars import HEX, LT, WS

MAX_DEPTH = 64  # a plugin config nests 2 or 3 levels; the node crashes near 2,000


# Every token of the JSON5 people write, in the forms where pyjson5 and the node read the
# same thing: integers of at most 18 digits, hex of at most 8 digits, exponents of at most
# 2 digits, no signed hex or Infinity/NaN with '+', ASCII keys, no surrogate escapes, no
# raw U+2028/U+2029 in strings, and a number or word always ended by what may follow it
# (pyjson5 reads `1_0` as 10). Atomic groups and possessive loops: linear, never
# backtracking.
_FOLLOW = rf"(?=[{WS},:\]}}/]|\Z)"


def _fast_string(quote: str) -> str:
    return (rf"{quote}(?>[^{quote}\\{LT}]++|\\(?>x{HEX}{{2}}|u(?![dD][89a-fA-F]){HEX}{{4}}"
            rf"|\r\n|[^1-9xu]))*+{quote}")


# Only for messages: compiled (and cached) by `re` on the first error, not at import.
_NEAR = r" near (\d+)"

_FAST = re.compile(
    "(?:"
    rf"[{WS}]++"
    rf"|//[^{LT}]*+"
    r"|(?>/\*(?s:.)*?\*/)"
    rf"|{_fast_string(chr(34))}|{_fast_string(chr(39))}"
    rf"|(?>0[xX]0*+{HEX}{{1,8}}|-Infinity|-NaN"
    rf"|[+-]?(?:(?:0|[1-9][0-9]{{0,17}})(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]{{1,2}})?)"
    rf"{_FOLLOW}"
    rf"|[A-Za-z$_][A-Za-z0-9$_]*+{_FOLLOW}"
    r"|[{}\[\]:,]"
    ")*+")


class ConfigSyntaxError(ValueError):
    """A config the node would refuse to read (or that is not text at all). `line` and
    `column` (1-based, columns in characters) say where, when there is a where."""

    def __init__(self, message: str, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def parse(raw: bytes) -> object:
    """The value the node reads from these bytes, or ConfigSyntaxError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigSyntaxError(f"not UTF-8 (byte 0x{raw[exc.start]:02x})", line,
                                column) from None
    if not text.strip():
        raise ConfigSyntaxError("the file is empty (a save in progress?)")
    import pyjson5  # here, not above: a plan whose configs are all cached never parses

    refusal = None
    if not _FAST.fullmatch(text):
        # The token-by-token scan is its own module, loaded only for a document that
        # needs it: its expressions cost a first parse about 3 ms to compile.
        from reconciler.configscan import first_refusal

        refusal = first_refusal(text)
    try:
        value = pyjson5.decode(text, maxdepth=MAX_DEPTH)
    except pyjson5.Json5DecoderException as exc:
        offset = _offset(exc)
        if isinstance(exc, pyjson5.Json5ExtraData) and len(exc.args) > 2 \
                and isinstance(exc.args[2], str):
            offset = max(text.find(exc.args[2], offset), offset)  # "near" is the value's end
        if refusal is not None and refusal.named and refusal.offset <= _line_end(text, offset):
            raise _at(text, refusal.message, refusal.offset) from None
        if isinstance(exc, pyjson5.Json5NestingTooDeep):
            raise _at(text, f"nested too deeply: a plugin config may nest at most "
                            f"{MAX_DEPTH} levels (the node crashes near 2,000)", offset) from None
        raise _at(text, f"invalid JSON5: {_humane(exc)}", offset) from None
    if refusal is not None:
        raise _at(text, refusal.message, refusal.offset)
    if "Infinity" in text or "NaN" in text:
        value = _non_finite_to_null(value)
    return value


def _non_finite_to_null(value: object) -> object:
    """serde_json stores a non-finite f64 as null (`Number::from_f64` is None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _non_finite_to_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_non_finite_to_null(v) for v in value]
    return value


def _offset(exc: Exception) -> int:
    """pyjson5's "near N" (1-based, in characters) as a 0-based offset."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    match = re.search(_NEAR, message)
    return max(int(match.group(1)) - 1, 0) if match else 0


def _humane(exc: Exception) -> str:
    """pyjson5's message without its offset (we give line and column) and byte reprs."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "not JSON5"
    message = re.sub(_NEAR, "", message)
    message = re.sub(r"b'([^']*)'", r"\1", message)
    message = re.sub(r"U\+([0-9a-fA-F]{4,6})", _char_name, message)
    message = message.replace("NumericLiteral", "number").removesuffix(" starting")
    if message.startswith("No JSON data found"):
        return "no value (only blanks and comments)"
    return message[:1].lower() + message[1:]


def _char_name(match: re.Match[str]) -> str:
    ch = chr(int(match.group(1), 16))
    return repr(ch) if ch.isprintable() and ch.isascii() else f"U+{match.group(1).upper()}"


def _line_end(text: str, offset: int) -> int:
    """The end of the line holding `offset`: the node's own rule is shown over pyjson5's
    message when it is on that line or before (pyjson5's offsets are approximate)."""
    end = text.find("\n", offset)
    return len(text) if end < 0 else end


def _at(text: str, message: str, offset: int) -> ConfigSyntaxError:
    offset = min(max(offset, 0), len(text))
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return ConfigSyntaxError(message, line, column)

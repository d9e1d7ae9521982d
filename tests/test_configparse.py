"""The config parse is the node's parse.

A table of what the node (the Rust json5 crate 0.4 into serde_json::Value) does with a
document, each row from a fact of issue 10 or from the crate's grammar and de.rs, checked
through configparse and, for a few rows, through the real CLI. Then hypothesis: no input
raises anything but ConfigSyntaxError, and what we accept the JSON5 spec (the json5
package) reads alike, except where the node and the spec are known to differ."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import json5
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.configparse import MAX_DEPTH, ConfigSyntaxError, parse
from tests.conftest import no_traceback

B = "\\"  # one backslash, so the documents below read as the file does


@dataclass(frozen=True)
class Reads:
    """The node accepts the document and reads this value."""
    value: object


@dataclass(frozen=True)
class Refuses:
    """The node refuses the document; we say why with this fragment, at line:column."""
    why: str
    line: int | None = None
    column: int | None = None


NODE = [
    # // comments end at every JSON5 line terminator, not only \n
    ('{libpath: "./a.so", // old\r libpath: "./b.so"}', Reads({"libpath": "./b.so"})),
    ('{libpath: "./a.so", // old\n libpath: "./b.so"}', Reads({"libpath": "./b.so"})),
    ('{libpath: "./a.so", // old\u2028 libpath: "./b.so"}', Reads({"libpath": "./b.so"})),
    ('{libpath: "./a.so", // old\u2029 libpath: "./b.so"}', Reads({"libpath": "./b.so"})),
    ('{libpath: "./a.so", /* old\r libpath: "./b.so" */}', Reads({"libpath": "./a.so"})),
    # an escaped surrogate pair is one character; a lone surrogate escape is refused
    (f'{{name: "{B}ud83d{B}ude00"}}', Reads({"name": "\U0001f600"})),
    (f"{{name: '{B}uD83D{B}uDE00'}}", Reads({"name": "\U0001f600"})),
    (f'{{{B}ud83d{B}ude00: 1}}', Reads({"\U0001f600": 1})),
    (f'{{name: "{B}ud83d"}}', Refuses("a \\uD800-\\uDBFF escape only followed by", 1, 9)),
    (f'{{name: "{B}ud83dx"}}', Refuses("a \\uD800-\\uDBFF escape only followed by", 1, 9)),
    (f'{{name: "{B}ud83d{B}ud83d"}}', Refuses("a \\uD800-\\uDBFF escape only followed by")),
    (f'{{name: "{B}ude00"}}', Refuses("lone \\uDC00-\\uDFFF escape", 1, 9)),
    # integers are i64 (parse_integer: str::parse::<i64>), never u64
    ("{a: 9223372036854775807}", Reads({"a": 9223372036854775807})),
    ("{a: -9223372036854775808}", Reads({"a": -9223372036854775808})),
    ("{a: 9223372036854775808}", Refuses("integers only up to 2^63-1", 1, 5)),
    ("{a: 18446744073709551615}", Refuses("integers only up to 2^63-1", 1, 5)),
    ("{a: -9223372036854775809}", Refuses("integers only down to -2^63", 1, 5)),
    ("{a: +5}", Reads({"a": 5})),
    ("{a: -0}", Reads({"a": 0})),
    ("{a: 1e2, b: 1.0, c: 5., d: .5}", Reads({"a": 100.0, "b": 1.0, "c": 5.0, "d": 0.5})),
    # hex is u32 (parse_hex: u32::from_str_radix), unsigned only
    ("{a: 0xFFFFFFFF, b: 0Xe}", Reads({"a": 4294967295, "b": 14})),
    ("{a: 0x00000000ff}", Reads({"a": 255})),
    ("{a: 0x100000000}", Refuses("hexadecimal numbers only up to 0xFFFFFFFF", 1, 5)),
    ("{a: -0x10}", Refuses("hexadecimal numbers only without a sign", 1, 5)),
    ("{a: +0x10}", Refuses("hexadecimal numbers only without a sign", 1, 5)),
    # Infinity and NaN: only unsigned or '-', and null in serde_json
    ("{a: Infinity, b: -Infinity, c: NaN, d: -NaN}",
     Reads({"a": None, "b": None, "c": None, "d": None})),
    ("[Infinity, [NaN, {x: -Infinity}]]", Reads([None, [None, {"x": None}]])),
    ("{a: +Infinity}", Refuses("Infinity only without '+'", 1, 5)),
    ("{a: +NaN}", Refuses("NaN only without '+'", 1, 5)),
    ("{Infinity: 1, NaNa: 2}", Reads({"Infinity": 1, "NaNa": 2})),
    # floats must be finite f64 ("error parsing number: too large")
    ("{a: 1e308}", Reads({"a": 1e308})),
    ("{a: 1e400}", Refuses("numbers only up to about 1.8e308", 1, 5)),
    ("{a: -1e309}", Refuses("numbers only up to about 1.8e308", 1, 5)),
    ("{a: " + "9" * 400 + ".0}", Refuses("numbers only up to about 1.8e308", 1, 5)),
    ("{a: 1e-400}", Reads({"a": 0.0})),
    # the grammar's numbers, not pyjson5's looser ones
    ("{a: 1_000}", Refuses("no '_' in numbers", 1, 6)),
    ("{a: .e5}", Refuses("cannot read '.'", 1, 5)),
    # raw U+2028/U+2029 inside strings are refused (char_literal); escaped they are fine
    ('{a: "x\u2028y"}', Refuses("raw U+2028 inside a string", 1, 7)),
    ("{a: 'x\u2029y'}", Refuses("raw U+2029 inside a string", 1, 7)),
    (f'{{a: "x{B}u2028y"}}', Reads({"a": "x\u2028y"})),
    (f'{{a: "x{B}\u2028y"}}', Reads({"a": "xy"})),  # a line continuation
    ('{a: "x\ny"}', Refuses("string")),
    # \0 followed by a digit: the spec forbids it, the node reads NUL and the digit
    (f'{{a: "{B}01"}}', Reads({"a": "\x001"})),
    (f'{{a: "{B}1"}}', Refuses("escape")),
    # keys: no spacing marks (Mc) unquoted; letters, letter numbers, Mn are fine
    ("{a\u0903: 1}", Refuses("no spacing mark (U+0903)", 1, 3)),
    ('{"a\u0903": 1}', Reads({"a\u0903": 1})),
    ("{\u00e9t\u00e9: 1, \u2160: 2, a\u0300: 3}", Reads({"\u00e9t\u00e9": 1, "\u2160": 2,
                                                        "a\u0300": 3})),
    # serde_json's map keeps the last of duplicate keys
    ("{a: 1, a: 2}", Reads({"a": 2})),
    # whitespace the node knows: BOM, NBSP, Zs; not U+0085 or ZWSP
    ("\ufeff{a: 1}", Reads({"a": 1})),
    ("\u00a0{a:\u30001}\u2003", Reads({"a": 1})),
    ("\u0085{a: 1}", Refuses("invalid JSON5")),
    ("\u200b{a: 1}", Refuses("invalid JSON5")),
    # nesting: the node crashes near 2,000 levels; we stop far below
    ("[" * MAX_DEPTH + "]" * MAX_DEPTH, Reads(json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH))),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), Refuses("nested too deeply", 1, 65)),
    ("{a:" * 2000 + "1" + "}" * 2000, Refuses("nested too deeply")),
    ("[" * 100_000, Refuses("nested too deeply")),
    # plain syntax errors keep line and column
    ('{\n  libpath: "x",\n  name: [1,,2],\n}', Refuses("invalid JSON5", 3, 12)),
    ("{a: 1}\n x", Refuses("invalid JSON5: extra data", 2, 2)),
    ("", Refuses("the file is empty")),
    (" \n\t", Refuses("the file is empty")),
    ("// only a comment", Refuses("no value")),
]


def same(a: object, b: object) -> bool:
    """Equal, and of the same JSON types all the way down (1 is not 1.0)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("document, node", NODE, ids=[repr(d)[:40] for d, _ in NODE])
def test_the_parse_does_what_the_node_does(document, node):
    if isinstance(node, Reads):
        assert same(parse(document.encode()), node.value)
        return
    with pytest.raises(ConfigSyntaxError) as refused:
        parse(document.encode())
    assert node.why in refused.value.message
    if node.line is not None:
        assert (refused.value.line, refused.value.column) == (node.line, node.column)


def test_bytes_that_are_not_utf8_are_refused_with_the_byte():
    with pytest.raises(ConfigSyntaxError) as refused:
        parse(b'{\n libpath: "\xff"}')
    assert refused.value.message == "not UTF-8 (byte 0xff)"
    assert (refused.value.line, refused.value.column) == (2, 12)


# -- the real CLI: a refused file is file:line:column: reason, exit 1 ----------------------
def test_validate_reads_what_the_node_reads(cli, ws):
    ws.library("a")
    ws.library("b")
    ws.config("x.json5", raw='{libpath: "../libs/liba.so", // old\r libpath: "../libs/libb.so"}')
    ws.config("y.json5", raw=f'{{libpath: "../libs/liba.so", name: "{B}ud83d{B}ude00"}}')
    result = cli("validate", "-o", "json")
    no_traceback(result)
    assert result.code == 0, result.out + result.err
    valid = {entry["file"].rsplit("/", 1)[1]: entry for entry in result.json["valid"]}
    assert valid["x.json5"]["libpath"] == str(ws.libs / "libb.so")
    assert valid["y.json5"]["name"] == "\U0001f600"


@pytest.mark.parametrize("raw, where, why", [
    ('{libpath: "../libs/liba.so",\n size: +Infinity}', "2:8", "Infinity only without '+'"),
    (f'{{libpath: "../libs/liba.so", name: "{B}ud83d"}}', "1:37", "lone surrogate"),
    ('{libpath: "../libs/liba.so", n: 0x1FFFFFFFF}', "1:33", "up to 0xFFFFFFFF"),
    ('{libpath: "../libs/liba.so", name: "a\u2028b"}', "1:38", "raw U+2028"),
    ("{a:" * 5000 + "}" * 5000, "1:193", "nested too deeply"),
])
def test_validate_names_the_nodes_rule_at_line_and_column(cli, ws, raw, where, why):
    ws.library("a")
    ws.config("x.json5", raw=raw)
    result = cli("validate")
    no_traceback(result)
    assert result.code == 1
    assert "internal error" not in result.out + result.err
    line = next(line for line in result.out.splitlines() if "x.json5" in line)
    assert f"{ws.conf / 'x.json5'}:{where}: " in line and why in line, result.out


# -- hypothesis: nothing but ConfigSyntaxError, whatever the input -------------------------
TOKENS = st.sampled_from([
    *'{}[]:,"\' \n\r\t/*abxyz019.-+eE_$\\', "\u2028", "\u2029", "\u00e9", "\u0903",
    "\u0300", "\ufeff", "//", "/*", "*/", "true", "null", "Infinity", "NaN", "0x1", "0xFFFFFFFFF",
    "9223372036854775808", "1e400", "\\u", "\\ud83d", "\\ude00", "\\0", "\\x4", "libpath",
])


def _only_the_parse_error(raw: bytes) -> object:
    try:
        return parse(raw)
    except ConfigSyntaxError as exc:
        assert isinstance(exc.message, str) and exc.message
        assert exc.line is None or (exc.line >= 1 and exc.column >= 1)
        return exc


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_value_or_the_parse_error(raw):
    _only_the_parse_error(raw)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=64))
def test_any_text_gives_a_value_or_the_parse_error(text):
    _only_the_parse_error(text.encode("utf-8", "surrogatepass"))


def _spec_value(value: object) -> object:
    """What the json5 package reads, turned into what the node reads where the two are
    known to differ on purpose: joined surrogate pairs, null for Infinity and NaN."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_spec_value(k): _spec_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_spec_value(v) for v in value]
    return value


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=25).map("".join))
def test_what_we_accept_the_spec_reads_alike(text):
    """Token soup: whatever we accept, JSON5 reads to the same value. The node's one
    extension of the spec, `\\0` before a digit, is left out."""
    result = _only_the_parse_error(text.encode("utf-8"))
    if isinstance(result, ConfigSyntaxError) or re.search(r"\\0[0-9]", text):
        return
    assert same(result, _spec_value(json5.loads(text))), text


# -- generated JSON5 documents read as the spec reads them ---------------------------------
IDENT = st.from_regex(r"[A-Za-z_$][A-Za-z0-9_$]{0,8}", fullmatch=True)
SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\u2028\u2029",
                                  exclude_categories=["Cs"]), max_size=12)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)  # the node reads no other integers
SCALARS = (st.none() | st.booleans() | I64
           | st.floats(allow_nan=False, allow_infinity=False) | SAFE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(IDENT | SAFE_TEXT, inner, max_size=4), max_leaves=12)


@st.composite
def json5_documents(draw, value=VALUES):
    """A value in the JSON5 a person writes: comments ended by any line terminator,
    unquoted keys, single quotes, hex, trailing commas, odd spacing. Raw U+2028/U+2029
    in strings, surrogates and integers beyond i64 are where the node and the spec
    differ; the table above holds those."""

    def gap() -> str:
        return draw(st.sampled_from(["", " ", "\n  ", " // note\n", " // note\r", "\r\n",
                                     " // x\u2028", " /* c */ ", "\t", "\u00a0", "\ufeff"]))

    def render(v) -> str:
        if isinstance(v, dict):
            items = []
            for key, item in v.items():
                quoted = json.dumps(key, ensure_ascii=draw(st.booleans()))
                if key.isidentifier() and key.isascii() and draw(st.booleans()):
                    quoted = key
                items.append(f"{gap()}{quoted}{gap()}:{gap()}{render(item)}")
            comma = "," if items and draw(st.booleans()) else ""
            return "{" + ",".join(items) + comma + gap() + "}"
        if isinstance(v, list):
            items = [gap() + render(item) for item in v]
            comma = "," if items and draw(st.booleans()) else ""
            return "[" + ",".join(items) + comma + gap() + "]"
        if isinstance(v, str) and not set(v) & set("'\"\\\n\r") and draw(st.booleans()):
            return f"'{v}'"
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF \
                and draw(st.booleans()):
            return hex(v)
        return json.dumps(v, ensure_ascii=draw(st.booleans()))

    value = draw(value)
    return value, gap() + render(value) + gap()


@settings(max_examples=600, deadline=None)
@given(json5_documents())
def test_generated_documents_read_as_the_spec_reads_them(document):
    value, text = document
    parsed = parse(text.encode("utf-8"))
    assert same(parsed, value), text
    assert same(parsed, _spec_value(json5.loads(text))), text

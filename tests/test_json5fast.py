"""The JSON5 fast path means exactly what json5 means, or steps aside.

One known, deliberate difference, shared with the plain-JSON path: an escaped surrogate
pair ("\\ud83d\\ude00") decodes to one character, as JSON and the node's serde decode
it; the json5 package leaves two lone surrogates, which cannot even be encoded as UTF-8.
The generated documents write non-ASCII characters as they are, as people do."""

from __future__ import annotations

import json
import math

import json5
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.json5fast import translate

IDENT = st.from_regex(r"[A-Za-z_$][A-Za-z0-9_$]{0,8}", fullmatch=True)
SAFE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\u2028\u2029",
                                  exclude_categories=["Cs", "Cc"]), max_size=12)
SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20)
           | st.floats(allow_nan=False, allow_infinity=False) | SAFE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(IDENT | SAFE_TEXT, inner, max_size=4), max_leaves=12)


@st.composite
def json5_documents(draw, value=VALUES):
    """Renders a value in the JSON5 a person writes: comments, unquoted keys, single
    quotes, trailing commas, odd spacing."""

    def gap() -> str:
        return draw(st.sampled_from(["", " ", "\n  ", " // note\n", " /* c */ ", "\t"]))

    def render(v) -> str:
        if isinstance(v, dict):
            items = []
            for key, item in v.items():
                quoted = json.dumps(key, ensure_ascii=False)
                if key.isidentifier() and key.isascii() and draw(st.booleans()):
                    quoted = key
                items.append(f"{gap()}{quoted}{gap()}:{gap()}{render(item)}")
            comma = "," if items and draw(st.booleans()) else ""
            return "{" + ",".join(items) + comma + gap() + "}"
        if isinstance(v, list):
            items = [gap() + render(item) for item in v]
            comma = "," if items and draw(st.booleans()) else ""
            return "[" + ",".join(items) + comma + gap() + "]"
        if isinstance(v, str) and not set(v) & set("'\"\\") and draw(st.booleans()):
            return f"'{v}'"
        return json.dumps(v, ensure_ascii=False)

    value = draw(value)
    return value, gap() + render(value) + gap()


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b and type(a) is type(b) if not isinstance(a, (dict, list)) else a == b


@settings(max_examples=600, deadline=None)
@given(json5_documents())
def test_common_json5_translates_to_the_same_value(document):
    value, text = document
    translated = translate(text)
    assert translated is not None, text
    assert json.loads(translated) == json5.loads(text) == value


ALPHABET = st.sampled_from([*'{}[]:,"\' \n/*abxyz019.-+eE_$\\u', "//", "/*", "*/", "true",
                            "null", "Infinity", "0x1"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(ALPHABET, max_size=25).map("".join))
def test_whatever_the_fast_path_accepts_json5_accepts_alike(text):
    translated = translate(text)
    if translated is None:
        return
    try:
        fast = json.loads(translated)
    except ValueError:
        return  # the caller falls back to json5, which reports the error
    reference = json5.loads(text)  # must not raise: the fast path accepted the text
    assert fast == reference, (text, translated)

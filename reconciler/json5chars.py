"""The character classes of the node's JSON5 grammar (the json5 crate's json5.pest), as
regular-expression fragments. The one-pass parse (reconciler.configparse) and the slow
scan that names a refused token (reconciler.configscan) both build on them; kept here so
that neither has to import the other for them."""

from __future__ import annotations

LT = "\n\r\u2028\u2029"  # the node's line terminators (json5.pest `line_terminator`)
# json5.pest WHITESPACE: TAB VT FF SP NBSP BOM, SPACE_SEPARATOR (Zs), line terminators.
WS = ("\t\v\f \u00a0\ufeff\u1680\u2000-\u200a\u202f\u205f\u3000" + LT)
HEX = "[0-9a-fA-F]"

"""JSON-RPC over a Unix socket as Agave's admin RPC speaks it: jsonrpc-ipc-server 18's
framing and jsonrpc-core 18's request handling, faithfully (docs/refnode.md, "Agave mode").

Pure: bytes in, frames out (`StreamDecoder`); a frame in, a response line out
(`respond`). The socket, the threads and the plugin manager live in
reconciler.refnode.agave, which hands `respond` a `dispatch` for the methods.

- Framing (`server-utils/src/stream_codec.rs`, `Separator::Empty`): requests need no
  delimiter; a frame ends where braces/brackets outside strings balance. Responses are
  compact JSON followed by `\\n` (`Separator::Byte(b'\\n')`).
- A request that is not JSON, or not a call jsonrpc-core can read, is `Parse error`
  (-32700, id null); a call without a readable method or params is `Invalid request`
  (-32600, its id kept); a missing `"jsonrpc": "2.0"` is `Unsupported JSON-RPC protocol
  version` in an answer without a `jsonrpc` member; an unknown method `Method not found`
  (-32601); a notification (no `id`) gets no answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from reconciler.refnode.plugins import rust_debug

# Positional parameter counts of the admin RPC's plugin methods (jsonrpc-derive).
METHODS = {"listPlugins": 0, "loadPlugin": 1, "unloadPlugin": 1, "reloadPlugin": 2}
_WHITESPACE = b"\r\n \t"


class StreamDecoder:
    """`StreamCodec::stream_incoming()`'s decoder, byte for byte: depth counts `{`/`[`
    outside strings, whitespace is counted from the buffer's start (strings included),
    and a frame that is not UTF-8 is dropped silently until more bytes arrive."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        frames: list[str] = []
        while True:
            found, frame = self._decode()
            if not found:
                return frames
            if frame is None:  # not UTF-8: skipped, and decoding waits for more bytes
                return frames
            frames.append(frame)

    def _decode(self) -> tuple[bool, str | None]:
        depth = 0
        in_str = is_escaped = False
        start = whitespaces = 0
        buf = self.buffer
        for idx, byte in enumerate(buf):
            if byte in b"{[" and not in_str:
                if depth == 0:
                    start = idx
                depth += 1
            elif byte in b"}]" and not in_str:
                depth -= 1
            elif byte == 0x22 and not is_escaped:
                in_str = not in_str
            elif byte in _WHITESPACE:
                whitespaces += 1
            is_escaped = byte == 0x5C and not is_escaped and in_str
            if depth == 0 and idx != start and idx - start + 1 > whitespaces:
                raw = bytes(buf[:idx + 1])
                del buf[:idx + 1]
                try:
                    return True, raw.decode("utf-8")
                except UnicodeDecodeError:
                    return True, None
        return False, None


# -- jsonrpc-core's types ------------------------------------------------------------------
Id = int | str | None


@dataclass(frozen=True)
class RpcError:
    """jsonrpc-core's `Error`: `data` is serialized only when present."""

    code: int
    message: str
    data: str | None = None


@dataclass(frozen=True)
class _Call:
    kind: str  # "method", "notification" or "invalid"
    method: str = ""
    params: object = None  # None (Params::None), a list or a dict
    id: Id = None
    versioned: bool = True  # `"jsonrpc": "2.0"` was given


class _Bad(Exception):
    """A value serde's untagged `Call`/`Request` cannot read."""


class _Obj(dict[str, object]):
    """A JSON object that remembers whether a key came twice (serde refuses that for a
    struct's own fields)."""

    duplicates: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, object]]) -> _Obj:
    obj = _Obj(pairs)
    seen: set[str] = set()
    dups = {k for k, _ in pairs if k in seen or seen.add(k)}  # type: ignore[func-returns-value]
    obj.duplicates = frozenset(dups)
    return obj


def _no_constant(name: str) -> object:
    raise ValueError(name)


def _parse_json(text: str) -> object:
    """serde_json's `from_str`: no NaN/Infinity, no lone surrogates, nothing trailing."""
    value = json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)
    _refuse_surrogates(value)
    return value


def _refuse_surrogates(value: object) -> None:
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, list):
        for item in value:
            _refuse_surrogates(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_surrogates(key)
            _refuse_surrogates(item)


def _id(value: object) -> Id:
    """`Id`: untagged Null | Num(u64) | Str(String)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
        return value
    raise _Bad


def _version(value: object) -> bool:
    """`Option<Version>`: null or absent is None (False), only "2.0" is V2."""
    if value is None:
        return False
    if value == "2.0":
        return True
    raise _Bad


def _params(value: object) -> object:
    if value is None or isinstance(value, (list, dict)):
        return value
    raise _Bad


def _method(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _Bad


def _call(value: object) -> _Call:
    """serde's untagged `Call`: MethodCall, then Notification, then Invalid { id }.
    Structs read from a map or, as serde allows, from a sequence of their fields."""
    for attempt in (_method_call, _notification, _invalid):
        try:
            return attempt(value)
        except _Bad:
            continue
    raise _Bad


def _fields(value: object, names: tuple[str, ...], defaults: dict[str, object],
            deny_unknown: bool) -> dict[str, object]:
    if isinstance(value, _Obj):
        if value.duplicates & set(names):
            raise _Bad
        if deny_unknown and set(value) - set(names):
            raise _Bad
        out = dict(defaults)
        out.update({k: v for k, v in value.items() if k in names})
        if set(names) - set(out):
            raise _Bad
        return out
    if isinstance(value, list):
        if len(value) > len(names):
            raise _Bad
        out = dict(zip(names, value, strict=False))
        for name in names[len(value):]:
            if name not in defaults:
                raise _Bad
            out[name] = defaults[name]
        return out
    raise _Bad


_ABSENT = object()


def _method_call(value: object) -> _Call:
    names = ("jsonrpc", "method", "params", "id")
    defaults: dict[str, object] = {"params": None}
    if isinstance(value, _Obj):
        defaults["jsonrpc"] = None  # an Option field may be missing from a map
    f = _fields(value, names, defaults, deny_unknown=True)
    return _Call("method", _method(f["method"]), _params(f["params"]), _id(f["id"]),
                 _version(f["jsonrpc"]))


def _notification(value: object) -> _Call:
    names = ("jsonrpc", "method", "params")
    defaults: dict[str, object] = {"params": None}
    if isinstance(value, _Obj):
        defaults["jsonrpc"] = None
    f = _fields(value, names, defaults, deny_unknown=True)
    return _Call("notification", _method(f["method"]), _params(f["params"]), None,
                 _version(f["jsonrpc"]))


def _invalid(value: object) -> _Call:
    f = _fields(value, ("id",), {"id": None}, deny_unknown=False)
    return _Call("invalid", id=_id(f["id"]))


def _request(text: str) -> _Call | list[_Call]:
    """`read_request`: untagged Single(Call) | Batch(Vec<Call>); else Parse error."""
    try:
        value = _parse_json(text)
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise _Bad from None
    try:
        return _call(value)
    except _Bad:
        if not isinstance(value, list):
            raise
        return [_call(item) for item in value]


# -- answers -------------------------------------------------------------------------------
Dispatch = Callable[[str, tuple[str, ...]], object]


class MethodError(Exception):
    """Raised by a dispatch to answer with a jsonrpc-core error."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(error.message)
        self.error = error


def respond(text: str, dispatch: Dispatch) -> str | None:
    """One frame in, its response line out (without the `\\n`), or None for no answer.
    `dispatch(method, params)` runs a known method with its checked positional params
    and returns the result, or raises MethodError."""
    try:
        request = _request(text)
    except _Bad:
        return _encode(_failure(RpcError(-32700, "Parse error"), None, True))
    if isinstance(request, list):
        outputs = [out for call in request if (out := _answer(call, dispatch)) is not None]
        return _encode(outputs) if outputs else None
    output = _answer(request, dispatch)
    return None if output is None else _encode(output)


def _answer(call: _Call, dispatch: Dispatch) -> dict[str, object] | None:
    if call.kind == "notification":
        return None  # every admin method is a method, so a notification runs nothing
    if call.kind == "invalid":
        return _failure(RpcError(-32600, "Invalid request"), call.id, True)
    if not call.versioned:
        return _failure(RpcError(-32600, "Unsupported JSON-RPC protocol version"), call.id,
                        False)
    if call.method not in METHODS:
        return _failure(RpcError(-32601, "Method not found"), call.id, True)
    try:
        params = check_params(call.params, METHODS[call.method])
        result = dispatch(call.method, params)
    except MethodError as exc:
        return _failure(exc.error, call.id, True)
    return {"jsonrpc": "2.0", "result": result, "id": call.id}


def _failure(error: RpcError, id_: Id, versioned: bool) -> dict[str, object]:
    body: dict[str, object] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    out: dict[str, object] = {"jsonrpc": "2.0"} if versioned else {}
    out.update({"error": body, "id": id_})
    return out


def _encode(value: object) -> str:
    """serde_json::to_string: compact, UTF-8 unescaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check_params(params: object, count: int) -> tuple[str, ...]:
    """jsonrpc-derive's params step: `expect_no_params()` for none, else
    `params.parse::<(String, …)>()` with serde's messages."""
    if count == 0:
        if params is None or params == []:
            return ()
        raise MethodError(RpcError(-32602, "Invalid parameters: No parameters were expected",
                                   _params_debug(params)))
    expected = f"a tuple of size {count}"
    if not isinstance(params, list):
        kind = "null" if params is None else "map"
        raise _invalid_params(f"invalid type: {kind}, expected {expected}")
    values: list[str] = []
    for index in range(count):
        if index >= len(params):
            raise _invalid_params(f"invalid length {len(params)}, expected {expected}")
        item = params[index]
        if not isinstance(item, str):
            raise _invalid_params(f"invalid type: {_unexpected(item)}, expected a string")
        values.append(item)
    if len(params) > count:
        raise _invalid_params(
            f"invalid length {len(params)}, expected fewer elements in array")
    return tuple(values)


def _invalid_params(reason: str) -> MethodError:
    return MethodError(RpcError(-32602, f"Invalid params: {reason}."))


def _unexpected(value: object) -> str:
    """serde's `Unexpected` Display for a serde_json Value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return f"floating point `{text if '.' in text else text + '.0'}`"
    if isinstance(value, str):
        return f'string "{value}"'
    return "sequence" if isinstance(value, list) else "map"


def _value_debug(value: object) -> str:
    """serde_json `Value`'s Debug (1.0.1xx: `Array [..]`, `Object {..}`; keys sorted as
    in its default BTreeMap)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return f"Bool({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"Number({_number(value)})"
    if isinstance(value, str):
        return f"String({rust_debug(value)})"
    if isinstance(value, list):
        return "Array [" + ", ".join(_value_debug(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "Object {" + _map_items(value) + "}"


def _map_items(value: dict[str, object]) -> str:
    return ", ".join(f"{rust_debug(k)}: {_value_debug(value[k])}" for k in sorted(value))


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    text = repr(value).replace("e+", "e")
    return text


def _params_debug(params: object) -> str:
    """`Params`'s derived Debug: `Array([..])` or `Map({..})`."""
    if isinstance(params, list):
        return "Array([" + ", ".join(_value_debug(v) for v in params) + "])"
    assert isinstance(params, dict)
    return "Map({" + _map_items(params) + "})"

"""The snarkOS adapter of the node client: snarkOS's three Slipstream routes as the
NodeClient interface (reconciler.nodeclient).

This is the only module that looks at HTTP. It turns status codes, v2 JSON errors and
the plain prefix's flattened 500 texts into the NodeError branch of the error tree
(reconciler.errors); nothing above it sees a status code.

A node tells which kind it is on first contact (`NodeClient.kind`), in the operator's
words: a build with the API, one without it (no `--features slipstream-plugins`, or any
snarkOS after PR #4468), the static-plugin proposal, or a node without a plugin manager.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import requests

from reconciler.auth import TokenSource, token_source
from reconciler.errors import (
    AlreadyLoaded,
    ApiAbsent,
    BadResponse,
    HiddenCause,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    NoPluginManager,
    NotLoaded,
    RateLimited,
    Rejected,
    RuntimeLoadUnsupported,
    Unauthorized,
)
from reconciler.noderules import SNARKOS
from reconciler.pacing import Pacer
from reconciler.settings import Settings, mask_url
from reconciler.snarkos import api_prefix

log = logging.getLogger(__name__)

MAX_BODY = 4 << 20
# The node's own texts for a load that failed because of the plugin (its config or its
# library), as opposed to the node having a bad moment: snarkVM's load steps, in order
# (node-api.md, "Load steps in snarkVM"). Retrying the same files fails the same way.
PLUGIN_FAULTS = (
    "Cannot open the plugin config file",
    "Cannot read the plugin config file",
    "is not in a valid JSON/JSON5 format",
    "Plugin library path is not specified",
    "Invalid plugin path",
    "Cannot load plugin shared library",
    "_create_plugin",
    "plugin constructor returned a null pointer",
    "on_load method failed",
)
# What the old prefixes answer for any error made by a layer (JWT, rate limiter, method
# router, body limit): snarkOS #4443. A branch appends " (HTTP nnn)".
CONVERT_FAILED = "Failed to convert error"
# How often an unexplained CONVERT_FAILED is retried (with a fresh token, slower) before
# the client says that the old prefix hides the cause.
HIDDEN_CAUSE_TRIES = 3
STATIC_HINT = ("it selects its plugins at start-up with --slipstream-plugins (a comma list "
               "of config paths), so plugins cannot be loaded or unloaded at run time; "
               "restart it with the wanted list instead")
ABSENT_HINT = ("this snarkOS build has no Slipstream plugin API: it needs a build with "
               "`--features slipstream-plugins` from before PR #4468 (snarkOS removed the "
               "API on 2026-09-21)")


_ALREADY = re.compile(r"The slipstream plugin '(.*)' is already loaded", re.S)
_WAIT = re.compile(r"Wait for ([0-9.]+)s")
_HTTP_CODE = re.compile(r"\(HTTP (\d{3})\)")


class NodeKind(StrEnum):
    """What a node turned out to be, on first contact."""

    API = "api"  # the Slipstream API with real status codes (/v2)
    API_OLD_PREFIX = "api-old-prefix"  # the API on / or /v1 only: errors arrive as text
    STATIC = "static"  # the static-plugin proposal: GET only
    NO_MANAGER = "no-plugin-manager"  # the API, but started without --slipstream-config
    ABSENT = "unsupported"  # no Slipstream API at all


KIND_WORDS = {
    NodeKind.API: "snarkOS with the Slipstream plugin API",
    NodeKind.API_OLD_PREFIX: "snarkOS with the Slipstream plugin API",
    NodeKind.STATIC: "snarkOS with static plugins (read-only: chosen at start-up)",
    NodeKind.NO_MANAGER: "snarkOS with the Slipstream API but no plugin manager",
    NodeKind.ABSENT: "snarkOS without the Slipstream plugin API",
}


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    json_error: dict[str, Any] | None  # the v2 error envelope, when it is one (parsed JSON)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()

    @property
    def route_missing(self) -> bool:
        """The outer router's answer for a path no route matches, on every prefix."""
        return self.status == 404 and not self.body


class SnarkosClient:
    """snarkOS's three Slipstream routes (list, load, unload) as the NodeClient interface."""

    rules = SNARKOS

    def __init__(self, url: str, network: str, auth: TokenSource, api: str = "auto",
                 max_rps: float = 10, timeout: float = 10.0, verify: bool | str = True,
                 rate_limit_patience: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if api not in ("auto", "v2", "v1"):
            raise ValueError(api)
        self._args = (url, network, auth, api, max_rps, timeout, verify, rate_limit_patience,
                      sleep)
        self.url = url.rstrip("/")
        self.shown = mask_url(self.url)  # what messages may show: no password
        self.network = network
        self.auth = auth
        self.api = api
        self.timeout = timeout
        self.pacer = Pacer(max_rps)
        self.patience = rate_limit_patience
        self._sleep = sleep
        self._v2, self._old = api_prefix("v2", network), api_prefix("", network)
        self._prefix: str | None = {"v2": self._v2, "v1": self._old}.get(api)
        self.kind: NodeKind | None = None
        self._runtime_loading: bool | None = None
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False  # no proxy between us and a node on this host
        self.on_response: Callable[[str, int], None] | None = None

    @property
    def prefix(self) -> str | None:
        """The API prefix in use, once known."""
        return self._prefix

    @property
    def described(self) -> str:
        """The kind of node, in the operator's words (once the node has answered)."""
        if self.kind is None:
            return "not asked yet"
        words = KIND_WORDS[self.kind]
        if self.kind is NodeKind.API:
            return f"{words} at {self._prefix}"
        if self.kind is NodeKind.API_OLD_PREFIX:
            return f"{words} at {self._prefix} (the old prefix: errors arrive as text)"
        return words

    def close(self) -> None:
        self.session.close()

    def sibling(self) -> SnarkosClient:
        other = SnarkosClient(*self._args)
        other.pacer = self.pacer  # one budget: the node limits per client IP
        return other

    def blames_the_plugin(self, reason: str) -> bool:
        """snarkVM's load steps that fail because of the plugin's config or library."""
        return any(text in reason for text in PLUGIN_FAULTS)

    # -- the three routes ------------------------------------------------------
    def list(self) -> list[str]:
        answer = self._call("GET", "")
        try:
            names = json.loads(answer.body)
        except ValueError:
            raise BadResponse(f"the node at {self.shown} answered the plugin list with something "
                              f"that is not JSON: {_excerpt(answer.text)}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadResponse(f"the node at {self.shown} answered the plugin list with "
                              f"{_excerpt(answer.text)}, not a JSON array of names")
        if self.kind is None or self.kind in (NodeKind.ABSENT, NodeKind.NO_MANAGER):
            self.kind = NodeKind.API if self._prefix == self._v2 else NodeKind.API_OLD_PREFIX
        return names

    def load(self, config_file: str) -> str:
        try:
            answer = self._call("POST", "", {"config_file": config_file})
        except NodeTimeout as exc:
            # The node has no server timeout and a slow on_load holds its write lock: the
            # load goes on without us and may still succeed. The next pass reads the list.
            raise NodeTimeout(f"{exc} to the load of {config_file}; a slow plugin "
                              "on_load may still complete it: the next pass finds it in "
                              "the node's list and records it, and never loads it "
                              "twice") from None
        try:
            name = json.loads(answer.body)["loaded"]
        except (ValueError, KeyError, TypeError):
            name = None
        if not isinstance(name, str):
            raise BadResponse(f"the node loaded {config_file} but answered "
                              f"{_excerpt(answer.text)}, without the plugin's name")
        return name

    def unload(self, name: str) -> None:
        self._call("DELETE", "/" + quote(name, safe=""))

    def reload(self, name: str, config_file: str) -> None:
        """snarkOS has no reload route (its rules say `native_reload=False`, so the
        executor replaces with an unload and a load); never called."""
        raise NotImplementedError("snarkOS cannot reload a plugin in one call")

    def require_runtime_loading(self) -> None:
        """Raises RuntimeLoadUnsupported unless this node can load and unload at run time,
        asked without changing anything: a POST without `config_file` is refused with 400
        before the node even looks for its plugin manager, where a node that selects its
        plugins at start-up answers 405. Asked once per client, before the first change."""
        if self._runtime_loading is None:
            try:
                self._call("POST", "", {})
                self._runtime_loading = True  # an odd node: the real calls will tell
            except RuntimeLoadUnsupported:
                self._runtime_loading = False
            except (Rejected, BadResponse, NoPluginManager):
                self._runtime_loading = True  # 400 "Missing required field", as expected
        if not self._runtime_loading:
            self.kind = NodeKind.STATIC
            raise RuntimeLoadUnsupported(f"the node at {self.shown} cannot change plugins: "
                                         f"{STATIC_HINT}")

    # -- plumbing --------------------------------------------------------------
    def _call(self, method: str, suffix: str, body: dict[str, str] | None = None) -> _Answer:
        deadline = time.monotonic() + self.patience
        refreshed = False
        hidden = 0
        while True:
            prefix = self._prefix or self._v2
            answer = self._send(method, f"{prefix}/slipstream/plugins{suffix}", body)
            if answer.route_missing:
                if self._prefix is None and prefix == self._v2:
                    # `auto`: an older node has no /v2 at all; try the plain prefix.
                    self._prefix = self._old
                    continue
                if self.api == "auto":
                    self._prefix = None  # an upgrade or downgrade may bring /v2 back
                raise self._absent(prefix)
            if self._prefix is None:
                self._prefix = prefix
            if 200 <= answer.status < 300:
                self.pacer.answered()
                return answer
            try:
                raise self._error(method, answer)
            except Unauthorized:
                if refreshed or not self.auth.refresh():
                    raise
                refreshed = True
            except RateLimited:
                wait = _retry_after(answer, self.pacer)
                if time.monotonic() + wait > deadline:
                    raise
                self.pacer.slow_down()
                self.pacer.hold(wait)
            except HiddenCause:
                hidden += 1
                if hidden >= HIDDEN_CAUSE_TRIES or time.monotonic() > deadline:
                    raise
                # It may be an expired token, the rate limit or a method this node does not
                # serve: a fresh token, a slower pace and a pause cover the first two.
                self.auth.refresh()
                self.pacer.slow_down()
                self._sleep(0.5 * 2 ** (hidden - 1))

    def _send(self, method: str, path: str, body: dict[str, str] | None) -> _Answer:
        self.pacer.wait()
        headers = {"Accept": "application/json"}
        token = self.auth.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status = 0  # counted as 0 ("no answer") unless a whole answer arrives
        try:
            response = self.session.request(
                method, self.url + path, json=body, headers=headers, stream=True,
                timeout=(min(3.05, self.timeout), self.timeout), allow_redirects=False)
            with response:
                raw = _read_capped(response, self.timeout)
            status = response.status_code
        except requests.exceptions.Timeout:
            raise NodeTimeout(f"the node at {self.shown} did not answer within "
                                  f"{self.timeout:g} s") from None
        except requests.exceptions.SSLError as exc:
            reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) \
                else "TLS handshake failed"
            raise NodeUnreachable(f"the node at {self.shown}: {reason}; give its CA with "
                                  "--ca-file") from None
        except requests.exceptions.RequestException as exc:
            raise NodeUnreachable(f"cannot reach the node at {self.shown}: "
                                  f"{_reason(exc)}") from None
        finally:
            if self.on_response is not None:  # every request, timeouts and refusals too
                self.on_response(method, status)
        if 300 <= response.status_code < 400:
            raise BadResponse(f"the node at {self.shown} answered with a redirect "
                              f"({response.status_code}) to {response.headers.get('Location')!r};"
                              " point --node-url at the node's REST address itself")
        return _Answer(response.status_code, raw, _json_error(response, raw))

    def _absent(self, prefix: str) -> NodeError:
        """404 with an empty body to the plugin routes: a build without the feature, or
        the wrong network (the routes are mounted under the node's own network only). An
        ordinary route of the same prefix tells the two apart."""
        probe = self._send("GET", f"{prefix}/block/height/latest", None)
        if probe.route_missing:
            self.kind = None
            return BadResponse(
                f"the node at {self.shown} answers 404 to every route under {prefix}: it is "
                f"not a snarkOS REST server for network {self.network!r}; check --network "
                "and --node-url")
        self.kind = NodeKind.ABSENT
        return ApiAbsent(f"the node at {self.shown} answers 404 on every prefix to the "
                         f"Slipstream plugin routes: {ABSENT_HINT}")

    def _error(self, method: str, answer: _Answer) -> NodeError:
        status = answer.status
        old_prefix = self._prefix is not None and not self._prefix.startswith("/v2/")
        if old_prefix and status == 500 and answer.text.startswith(CONVERT_FAILED):
            code = _HTTP_CODE.search(answer.text)
            if code is None:
                return self._hidden_cause(method)
            status = int(code.group(1))  # the branch that says which layer answered
        if status == 401:
            return Unauthorized(f"the node at {self.shown} refused the request as unauthorized "
                                f"(401) with {self.auth.description}; check --jwt-token-file, "
                                f"--jwt-secret-file or $SLIPSTREAM_JWT_TOKEN")
        if answer.json_error is not None:
            return self._v2_error(answer)
        if status == 429:
            return RateLimited(f"the node at {self.shown} kept rate-limiting us (429) for "
                               f"{self.patience:g} s; another client on this host may share "
                               "its per-IP budget, or raise its --rest-rps")
        if status == 405 and method in ("POST", "DELETE"):
            self.kind = NodeKind.STATIC
            return RuntimeLoadUnsupported(f"the node at {self.shown} answered 405 to a plugin "
                                          f"{'load' if method == 'POST' else 'unload'}: "
                                          f"{STATIC_HINT}")
        if status == 413:
            return BadResponse(f"the node at {self.shown} refused the request body as too "
                               "large (413)")
        if old_prefix and answer.status == 500:
            return self._v1_error(answer.text)
        return BadResponse(f"the node at {self.shown} answered {status}: "
                           f"{_excerpt(answer.text) or '(empty body)'}")

    def _hidden_cause(self, method: str) -> HiddenCause:
        return HiddenCause(
            f"the node at {self.shown} answered {method} on the old prefix {self._prefix} "
            f"with 500 {CONVERT_FAILED!r} {HIDDEN_CAUSE_TRIES} times (snarkOS #4443): that "
            "prefix hides the cause, which is an expired or wrong token, the rate limit, or a "
            "method the node does not serve. Use --api v2 if the node has it (real status "
            "codes), check the token (--jwt-token-file, --jwt-secret-file or "
            "$SLIPSTREAM_JWT_TOKEN), and keep --max-rps under the node's --rest-rps")

    def _v2_error(self, answer: _Answer) -> NodeError:
        error = answer.json_error or {}
        reason = " — ".join(str(p) for p in [error.get("message"), *error.get("chain", [])] if p)
        kind = error.get("error_type")
        if kind == "unprocessable_entity":
            match = _ALREADY.search(reason)
            return AlreadyLoaded(reason, match.group(1) if match else None)
        if kind == "not_found":
            return NotLoaded(reason)
        if kind == "service_unavailable":
            return self._no_manager()
        if kind == "too_many_requests":
            return RateLimited(f"the node at {self.shown} kept rate-limiting us: {reason}")
        return Rejected(reason or f"the node answered {answer.status}")

    def _v1_error(self, text: str) -> NodeError:
        """The plain prefix flattens the node's own errors to 500; the text is all we have."""
        match = _ALREADY.search(text)
        if match:
            return AlreadyLoaded(text, match.group(1))
        if re.search(r"is not loaded", text):
            return NotLoaded(text)
        if "No Slipstream plugin manager" in text:
            return self._no_manager()
        if "Too Many Requests" in text:
            return RateLimited(f"the node at {self.shown} kept rate-limiting us: {text}")
        return Rejected(text or "the node answered 500 with no reason")

    def _no_manager(self) -> NoPluginManager:
        self.kind = NodeKind.NO_MANAGER
        return NoPluginManager(f"the node at {self.shown} has no Slipstream plugin manager: start "
                               "snarkOS with at least one --slipstream-config")


def _read_capped(response: requests.Response, timeout: float) -> bytes:
    """A node that streams forever or answers 10 MB is not the node's API."""
    deadline = time.monotonic() + max(timeout, 1.0) * 2
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise BadResponse(f"the answer from {mask_url(response.url)} is larger than "
                              f"{MAX_BODY >> 20} MiB; that is not the node's API")
        if time.monotonic() > deadline:
            raise requests.exceptions.ReadTimeout("the answer did not end")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_error(response: requests.Response, raw: bytes) -> dict[str, Any] | None:
    if response.status_code < 400 or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("error_type"), str):
        return value
    return None


def _retry_after(answer: _Answer, pacer: Pacer) -> float:
    """The node says `Wait for {N}s` with N rounded down (so mostly 0): N, plus one of our
    own (already slowed) intervals."""
    match = _WAIT.search(answer.text)
    told = min(float(match.group(1)), 10.0) if match else 0.0
    return told + max(pacer.interval, 0.1)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "Connection reset",
                  "Remote end closed connection", "timed out", "No route to host"):
        if known in text:
            return known.lower()
    return type(exc).__name__


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def connect(settings: Settings) -> SnarkosClient:
    """A client for the settings' node. Turning TLS verification off is said out loud."""
    if settings.insecure_skip_verify and settings.node_url.startswith("https:"):
        log.warning("TLS certificate verification of %s is OFF (--insecure-skip-verify): "
                    "anyone on the path can impersonate the node and read the token",
                    settings.shown_node)
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once above
    return SnarkosClient(settings.node_url, settings.network,
                         token_source(settings.jwt_token_file, settings.jwt_secret_file),
                         api=settings.api, max_rps=settings.max_rps, timeout=settings.timeout,
                         verify=settings.verify)

"""The node client: snarkOS's three Slipstream routes as three methods.

This is the only module that looks at HTTP. It turns status codes, v2 JSON errors and
the plain prefix's flattened 500 texts into the exception tree below; nothing above it
sees a status code.

    NodeError
    ├── NodeUnreachable          connection refused, reset, timed out
    ├── Unauthorized             401 after a token refresh
    ├── NoPluginManager          503: started without any --slipstream-config
    ├── RuntimeLoadUnsupported   405/404 on POST: a node that selects plugins at start-up
    ├── RateLimited              429 that outlasted our patience
    ├── AlreadyLoaded(name)      422: that name or that library is loaded
    ├── NotLoaded(name)          404 on DELETE
    ├── Rejected(reason)         any other load/unload failure (500)
    └── BadResponse              an answer that is not the node's API
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import requests

from reconciler.auth import TokenSource
from reconciler.errors import ReconcilerError
from reconciler.settings import mask_url

MAX_BODY = 4 << 20
# The node's own texts for a load that failed because of the plugin (its config or its
# library), as opposed to the node having a bad moment: node-api.md's load checks.
PLUGIN_FAULTS = (
    "Cannot open the plugin config file",
    "is not in a valid JSON/JSON5 format",
    "Plugin library path is not specified",
    "Cannot load plugin shared library",
    "_create_plugin",
    "on_load method failed",
)


def blames_the_plugin(reason: str) -> bool:
    """Whether a load failure is the plugin's (retrying the same files will fail again)."""
    return any(text in reason for text in PLUGIN_FAULTS)
_ALREADY = re.compile(r"The slipstream plugin '(.*)' is already loaded", re.S)
_WAIT = re.compile(r"Wait for ([0-9.]+)s")


class NodeError(ReconcilerError):
    pass


class NodeUnreachable(NodeError):
    pass


class Unauthorized(NodeError):
    pass


class NoPluginManager(NodeError):
    pass


class RuntimeLoadUnsupported(NodeError):
    pass


class RateLimited(NodeError):
    pass


class BadResponse(NodeError):
    pass


class AlreadyLoaded(NodeError):
    def __init__(self, message: str, name: str | None) -> None:
        super().__init__(message)
        self.name = name


class NotLoaded(NodeError):
    pass


class Rejected(NodeError):
    pass


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    json_error: dict | None  # the v2 error envelope, when it is one

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()


class Pacer:
    """Keeps our own request rate under the node's limit (GCRA, burst = rate), so that a
    large apply meets no 429 in the first place; a 429 is still handled, since other
    clients share the node's per-IP budget."""

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        # 2 % slower than the node lets us go: clocks and queues are not exact.
        self._interval = 1.02 / rps if rps > 0 else 0.0
        self._tolerance = self._interval * (max(1, int(rps)) - 1)
        self._clock, self._sleep = clock, sleep
        self._tat = 0.0
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        return self._interval

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            delay = tat - self._tolerance - now
            self._tat = tat + self._interval
        if delay > 0:
            self._sleep(delay)

    def hold(self, seconds: float) -> None:
        """The node said wait: nobody from this client sends before then."""
        with self._lock:
            self._tat = max(self._tat, self._clock() + seconds + self._tolerance)


class NodeClient:
    def __init__(self, url: str, network: str, auth: TokenSource, api: str = "auto",
                 max_rps: float = 10, timeout: float = 10.0, verify: bool | str = True,
                 rate_limit_patience: float = 120.0) -> None:
        if api not in ("auto", "v2", "v1"):
            raise ValueError(api)
        self.url = url.rstrip("/")
        self.shown = mask_url(self.url)  # what messages may show: no password
        self.network = network
        self.auth = auth
        self.api = api
        self.timeout = timeout
        self.pacer = Pacer(max_rps)
        self.patience = rate_limit_patience
        self._prefix: str | None = {"v2": f"/v2/{network}", "v1": f"/{network}"}.get(api)
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False  # no proxy between us and a node on this host
        self.on_response: Callable[[str, int], None] | None = None

    @property
    def prefix(self) -> str | None:
        """The API prefix in use, once known."""
        return self._prefix

    def close(self) -> None:
        self.session.close()

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
        return names

    def load(self, config_file: str) -> str:
        answer = self._call("POST", "", {"config_file": config_file})
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

    # -- plumbing --------------------------------------------------------------
    def _call(self, method: str, suffix: str, body: dict | None = None) -> _Answer:
        deadline = time.monotonic() + self.patience
        refreshed = False
        while True:
            prefix = self._prefix or f"/v2/{self.network}"
            answer = self._send(method, f"{prefix}/slipstream/plugins{suffix}", body)
            if self._prefix is None:
                # `auto`: an older node has no /v2 at all and answers a bare 404 there.
                if answer.status == 404 and answer.json_error is None:
                    self._prefix = f"/{self.network}"
                    continue
                self._prefix = prefix
            if 200 <= answer.status < 300:
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
                self.pacer.hold(wait)

    def _send(self, method: str, path: str, body: dict | None) -> _Answer:
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
            raise NodeUnreachable(f"the node at {self.shown} did not answer within "
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

    def _error(self, method: str, answer: _Answer) -> NodeError:
        if answer.status == 401:
            return Unauthorized(f"the node at {self.shown} refused the request as unauthorized "
                                f"(401) with {self.auth.description}; check --jwt-token-file, "
                                f"--jwt-secret-file or $SLIPSTREAM_JWT_TOKEN")
        if answer.json_error is not None:
            return self._v2_error(answer)
        if answer.status == 429:
            return RateLimited(f"the node at {self.shown} kept rate-limiting us (429)")
        if answer.status in (404, 405) and method == "POST":
            return RuntimeLoadUnsupported(
                f"the node at {self.shown} answered {answer.status} to a plugin load: it cannot "
                "load plugins at run time (it selects them at start-up)")
        if answer.status == 500 and self._prefix is not None and not self._prefix.startswith(
                "/v2/"):
            return self._v1_error(answer.text)
        return BadResponse(f"the node at {self.shown} answered {answer.status}: "
                           f"{_excerpt(answer.text) or '(empty body)'}")

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
        """The plain prefix flattens every error to 500; the text is all we have."""
        match = _ALREADY.search(text)
        if match:
            return AlreadyLoaded(text, match.group(1))
        if re.search(r"is not loaded", text):
            return NotLoaded(text)
        if "No Slipstream plugin manager" in text:
            return self._no_manager()
        if "Too Many Requests" in text:
            return RateLimited(f"the node at {self.shown} kept rate-limiting us: {text}")
        if text.lower() == "unauthorized":
            return Unauthorized(f"the node at {self.shown} refused the request as unauthorized "
                                f"with {self.auth.description}")
        return Rejected(text or "the node answered 500 with no reason")

    def _no_manager(self) -> NoPluginManager:
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


def _json_error(response: requests.Response, raw: bytes) -> dict | None:
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
    match = _WAIT.search(answer.text)
    if match:
        return min(float(match.group(1)), 10.0) + 0.01
    return max(pacer.interval, 0.1)


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

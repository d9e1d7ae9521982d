"""Where the node's bearer token comes from.

Secrets never travel on argv: the token comes from SLIPSTREAM_JWT_TOKEN, from the token
file the node writes at start-up (re-read after a 401, since a restarted node without a
fixed --jwt-secret writes a new one), from the node's base64 secret (we mint tokens the
way the node does), or from systemd's credential directory (`jwt-secret`, the node's
secret, or `jwt-token`, a copy of the node's token file: under DynamicUser= and
ProtectHome= the service cannot read a file in the node's home, but systemd copies it
in as root with LoadCredential=). A node started with --nojwt needs none of them.

Every unreadable file is a SettingsError naming the file and the reason, never a
PermissionError: an operator meets these on the first start of the service.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from reconciler.errors import SettingsError
from reconciler.snarkos import mint_token

log = logging.getLogger(__name__)

TOKEN_ENV = "SLIPSTREAM_JWT_TOKEN"
CREDENTIAL_NAME = "jwt-secret"
TOKEN_CREDENTIAL_NAME = "jwt-token"


class TokenSource:
    """No authentication: for nodes started with --nojwt."""

    description = "no JWT (the node must run with --nojwt)"

    def token(self) -> str | None:
        return None

    def refresh(self) -> bool:
        """After a 401: True when a different token may now be available."""
        return False


class StaticToken(TokenSource):
    description = f"the token in ${TOKEN_ENV}"

    def __init__(self, token: str) -> None:
        self._token = token.strip()

    def token(self) -> str | None:
        return self._token


EMPTY_TRIES, EMPTY_WAIT = 20, 0.05


class TokenFile(TokenSource):
    def __init__(self, path: Path, description: str | None = None) -> None:
        self.path = path
        self.description = description or f"the token file {path} (--jwt-token-file)"
        _warn_if_exposed(path)
        self._token = self._read()

    def _read(self) -> str:
        # The node rewrites this file in place (std::fs::write truncates, then writes):
        # a reader can find it empty for a moment. Empty for a whole second is empty.
        for _ in range(EMPTY_TRIES):
            text = _read_text(self.path, "the JWT token file")
            if text:
                break
            time.sleep(EMPTY_WAIT)
        if not text:
            raise SettingsError(f"the JWT token file {self.path} is empty")
        return text

    def token(self) -> str | None:
        return self._token

    def refresh(self) -> bool:
        previous, self._token = self._token, self._read()
        return self._token != previous


class SecretFile(TokenSource):
    """Mints tokens with the node's own secret, claims shaped like the node's."""

    def __init__(self, path: Path, description: str) -> None:
        self.description = description
        _warn_if_exposed(path)
        text = _read_text(path, "the JWT secret file")
        try:
            secret = base64.b64decode(text, validate=True)
        except ValueError:
            secret = b""
        if len(secret) != 16:
            raise SettingsError(f"the JWT secret in {path} must be standard base64 of exactly "
                                "16 bytes, as snarkOS's --jwt-secret takes it")
        self._secret = secret
        self._token = self._mint()

    def _mint(self) -> str:
        return mint_token(self._secret, "slipstream-reconciler", int(time.time()))

    def token(self) -> str | None:
        return self._token


def token_source(token_file: Path | None, secret_file: Path | None,
                 environ: Mapping[str, str] | None = None) -> TokenSource:
    environ = os.environ if environ is None else environ
    given = [what for what, value in (("--jwt-token-file", token_file),
                                      ("--jwt-secret-file", secret_file),
                                      (f"${TOKEN_ENV}", environ.get(TOKEN_ENV))) if value]
    if len(given) > 1:
        raise SettingsError(f"give one way to authenticate, not {' and '.join(given)}")
    if environ.get(TOKEN_ENV):
        return StaticToken(environ[TOKEN_ENV])
    if token_file is not None:
        return TokenFile(token_file)
    if secret_file is not None:
        return SecretFile(secret_file, f"the JWT secret in {secret_file} (--jwt-secret-file)")
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        return _credential(Path(credentials))
    return TokenSource()


def _credential(directory: Path) -> TokenSource:
    """systemd's credential directory: the node's secret, else a copy of its token file.
    The directory is set only when the unit names credentials, so one that cannot be
    read is a deployment error to report, not a reason to carry on without a token."""
    for name in (CREDENTIAL_NAME, TOKEN_CREDENTIAL_NAME):
        path = directory / name
        try:
            os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SettingsError(_unreadable(f"the systemd credential {name}", path, exc)) \
                from None
        if name == CREDENTIAL_NAME:
            return SecretFile(path, f"the systemd credential {name} ({path})")
        return TokenFile(path, f"the systemd credential {name} ({path})")
    try:
        os.listdir(directory)
    except OSError as exc:
        raise SettingsError(_unreadable("the systemd credentials directory", directory, exc)) \
            from None
    return TokenSource()


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise SettingsError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SettingsError(_unreadable(what, path, exc)) from None


def _unreadable(what: str, path: Path, exc: OSError) -> str:
    reason = (exc.strerror or str(exc)).lower()
    message = f"cannot read {what} {path}: {reason}"
    if isinstance(exc, PermissionError) and os.geteuid() != 0 and "credential" not in what:
        message += (f" (this process runs as uid {os.geteuid()}; under systemd's DynamicUser= "
                    "hand the file over with LoadCredential=, see docs/operator-guide.md)")
    return message


_warned: set[str] = set()


def _warn_if_exposed(path: Path) -> None:
    """Once per file and process: the daemon builds a client per thread, and a warning
    repeated on every start of every client reads as many problems."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    key = os.path.abspath(path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and key not in _warned:
        _warned.add(key)
        log.warning("%s is readable by group or others (mode %o): run `chmod 600 %s` once; "
                    "the node keeps that mode when it rewrites the file", path,
                    stat.S_IMODE(mode), path)

"""Where the node's bearer token comes from.

Secrets never travel on argv: the token comes from SLIPSTREAM_JWT_TOKEN, from the token
file the node writes at start-up (re-read after a 401, since a restarted node without a
fixed --jwt-secret writes a new one), from the node's base64 secret (we mint tokens the
way the node does), or from systemd's credential directory. A node started with --nojwt
needs none of them.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
import warnings
from pathlib import Path

from reconciler.errors import SettingsError

log = logging.getLogger(__name__)

TOKEN_ENV = "SLIPSTREAM_JWT_TOKEN"
CREDENTIAL_NAME = "jwt-secret"
TEN_YEARS = 10 * 365 * 24 * 3600


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


class TokenFile(TokenSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"the token file {path} (--jwt-token-file)"
        _warn_if_exposed(path)
        self._token = self._read()

    def _read(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"cannot read the JWT token file {self.path}: "
                                f"{exc.strerror}") from None
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
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"cannot read the JWT secret file {path}: {exc.strerror}")\
                from None
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
        import jwt  # only here: a token file or variable needs no JWT library (18 ms)

        now = int(time.time())
        claims = {"sub": "slipstream-reconciler", "iat": now, "exp": now + TEN_YEARS}
        with warnings.catch_warnings():
            # snarkOS's secret is 16 bytes by design; pyjwt's advice does not apply.
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            return jwt.encode(claims, self._secret, algorithm="HS256")

    def token(self) -> str | None:
        return self._token


def token_source(token_file: Path | None, secret_file: Path | None,
                 environ: dict[str, str] | None = None) -> TokenSource:
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
    if credentials and (Path(credentials) / CREDENTIAL_NAME).exists():
        path = Path(credentials) / CREDENTIAL_NAME
        return SecretFile(path, f"the systemd credential {CREDENTIAL_NAME} ({path})")
    return TokenSource()


def _warn_if_exposed(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by group or others (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))

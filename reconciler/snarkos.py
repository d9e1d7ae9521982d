"""Facts about snarkOS that the client and the reference node both need, defined once:
the networks, the API prefixes, and the node's JWT (node/rest/src/helpers/auth.rs)."""

from __future__ import annotations

import warnings

NETWORKS = ("mainnet", "testnet", "canary")
# The routes are mounted under three prefixes: /{network}, /v1/{network}, /v2/{network}.
API_VERSIONS = ("", "v1", "v2")
# A token's `exp` is its `iat` plus ten years.
TOKEN_LIFETIME = 10 * 365 * 24 * 3600


def api_prefix(version: str, network: str) -> str:
    """`/v2/mainnet`, `/v1/mainnet` or (version "") the plain `/mainnet`."""
    return f"/{version}/{network}" if version else f"/{network}"


def mint_token(secret: bytes, subject: str, issued_at: int) -> str:
    """An HS256 token shaped like the node's: {sub, iat, exp = iat + ten years}."""
    import jwt  # only here: a token file or variable needs no JWT library (18 ms)

    claims = {"sub": subject, "iat": issued_at, "exp": issued_at + TOKEN_LIFETIME}
    with warnings.catch_warnings():
        # snarkOS's secret is 16 bytes by design; pyjwt's advice does not apply.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")

"""Secrets for the service: API keys, reviewer passwords, session and CSRF tokens.

API keys and session tokens are 256-bit random strings, so a plain SHA-256 of them is what
is stored (nothing to brute-force); reviewer passwords are chosen by people, so they are
stored as salted scrypt hashes (the standard library's, memory-hard). Comparisons are
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "fc_"
# scrypt cost: 16 MiB and ~50 ms per login on the 2-core CI machine.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def new_token(prefix: str = "") -> str:
    """A URL-safe random token with 256 bits of entropy."""
    return prefix + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return new_token(KEY_PREFIX)


def token_hash(token: str) -> str:
    """What is stored for a high-entropy token (API key, session)."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` for a reviewer's password."""
    if len(password) < 8:
        raise ValueError("a reviewer password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(got.hex(), digest)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens; False if either is missing."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))

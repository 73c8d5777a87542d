"""API keys: where a request carries one, and which tenant it belongs to.

Keys are kept only as SHA-256 digests, so a memory dump or a debugger shows no usable key, and
they are never logged or echoed in an error. A lookup hashes the presented key and finds the
digest in a dict; the match is then confirmed with ``hmac.compare_digest``. The dict lookup's
timing depends only on the digest of the attacker's guess, which tells nothing about a stored
key (finding a key from its digest's prefix is a preimage attack), and the final comparison
takes the same time wherever the digests differ.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

API_KEY_HEADER = "x-api-key"  # accepted besides the configured header (OpenAI-style clients)
BEARER = "bearer "


class MalformedKey(ValueError):
    """The key header is present but does not hold a key (e.g. ``Authorization: Basic ...``)."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def extract_key(headers: Mapping[str, str], header: str = "authorization") -> str | None:
    """The API key a request presents, or None when it presents none.

    ``headers`` have lower-case names. The configured ``header`` comes first: for
    ``authorization`` it must be ``Bearer <key>``; any other header holds the key itself (an
    optional ``Bearer`` prefix is accepted). Then ``x-api-key``. Raises ``MalformedKey`` when
    the header is there but holds no key.
    """
    value = headers.get(header)
    if value is not None:
        value = value.strip()
        if value[: len(BEARER)].lower() == BEARER:
            value = value[len(BEARER) :].strip()
        elif header == "authorization":
            raise MalformedKey("the Authorization header must be 'Bearer <API key>'")
        if not value:
            raise MalformedKey(f"the {header} header holds no API key")
        return value
    value = headers.get(API_KEY_HEADER)
    if value is not None:
        value = value.strip()
        if not value:
            raise MalformedKey(f"the {API_KEY_HEADER} header holds no API key")
        return value
    return None


class KeyRing:
    """Digest of every key -> the tenant it belongs to."""

    def __init__(self, keys: Iterable[tuple[str, str]] = ()) -> None:
        self._entries: dict[bytes, tuple[bytes, str]] = {}
        for key, tenant in keys:
            self.add(key, tenant)

    def add(self, key: str, tenant: str) -> None:
        stored = digest(key)
        found = self._entries.setdefault(stored, (stored, tenant))[1]
        if found != tenant:
            raise ValueError(f"a key of tenant {tenant!r} is already given to tenant {found!r}")

    def __len__(self) -> int:
        return len(self._entries)

    def tenant_of(self, key: str) -> str | None:
        """The tenant whose key ``key`` is, or None."""
        presented = digest(key)
        entry = self._entries.get(presented)
        if entry is not None and hmac.compare_digest(entry[0], presented):
            return entry[1]
        return None

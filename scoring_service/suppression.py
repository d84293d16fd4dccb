"""Suppression keys: how an erased person is recognised again without keeping who they were.

A key is HMAC-SHA256 over `id:<id>` (a lead id, userId, anonymousId or previousId: one
namespace, as identity stitching treats them) or `email:<address>` (trimmed, case-folded),
under a secret the service holds (services/adapters/secrets.py). The suppression list keeps
only keys, so a copy of the database names nobody; the same id always gives the same key, so
the list can still be checked for every event.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from scoring_service.intake import Event


def normal_email(address: str) -> str:
    return address.strip().casefold()


class Suppression:
    """Makes the keys of ids and addresses under one secret."""

    def __init__(self, secret: bytes) -> None:
        # The secret's inner and outer pads are hashed once; each key copies that state.
        self._base = hmac.new(secret, digestmod=hashlib.sha256)

    def _key(self, text: str) -> bytes:
        mac = self._base.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        return mac.digest()

    def id_key(self, value: str) -> bytes:
        return self._key("id:" + value)

    def email_key(self, address: str) -> bytes:
        return self._key("email:" + normal_email(address))

    def person_keys(self, ids: Iterable[str], traits: Iterable[Mapping[str, Any]]) -> set[bytes]:
        """The keys of a person known by `ids`, with the e-mail addresses in their traits."""
        keys = {self.id_key(i) for i in ids}
        for held in traits:
            email = held.get("email")
            if isinstance(email, str) and email.strip():
                keys.add(self.email_key(email))
        return keys

    def event_keys(self, event: Event) -> list[bytes]:
        """The keys an event names its person by: its ids and the address in its traits."""
        keys = [self.id_key(i) for i in (event.user_id, event.anonymous_id, event.previous_id) if i]
        email = (event.traits or {}).get("email")
        if isinstance(email, str) and email.strip():
            keys.append(self.email_key(email))
        return keys

"""Secrets at rest: webhook signing secrets and CRM tokens, encrypted with one key.

The key is the setting `secrets_key` (a Fernet key: 32 random bytes, URL-safe base64; every
instance needs the same one, from a Kubernetes secret for instance). Where it is unset, a
key is made on first use and kept in the data directory with owner-only permissions, which
is what a single `make run` needs. A stored secret is never returned or logged: the API
shows a webhook's secret once, when it is made.
"""

from __future__ import annotations

import base64
import os
import secrets as random
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from services.settings import Settings
from stage_router.deliveries import SECRET_PREFIX

KEY_FILE = "secrets.key"


class SecretsUnreadable(Exception):
    """A stored secret does not open with this key (the key changed)."""


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(random.token_bytes(32)).decode()


class Vault:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._fernet: Fernet | None = None

    def _key(self) -> bytes:
        if self._settings.secrets_key is not None:
            return self._settings.secrets_key.get_secret_value().encode()
        path = Path(self._settings.data_dir) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key())
        return path.read_bytes().strip()

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            self._fernet = Fernet(self._key())
        return self._fernet

    def seal(self, secret: str) -> bytes:
        return self._cipher().encrypt(secret.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._cipher().decrypt(bytes(sealed)).decode()
        except InvalidToken:
            raise SecretsUnreadable("a stored secret does not open with the secrets key") from None


SUPPRESSION_KEY_FILE = "suppression.key"


def suppression_secret(settings: Settings) -> bytes:
    """The secret suppression keys are made with (scoring_service/suppression.py): the
    setting `suppression_key`, else one made in the data directory on first use. Every
    instance needs the same one, and changing it lets suppressed people back in."""
    if settings.suppression_key is not None:
        return settings.suppression_key.get_secret_value().encode()
    path = Path(settings.data_dir) / SUPPRESSION_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes().strip()
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64encode(random.token_bytes(32)))
    return path.read_bytes().strip()

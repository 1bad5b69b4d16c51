"""Secrets generated per stack, kept in one place and masked in every message."""

from __future__ import annotations

import secrets as _secrets
import threading

MASK = "***"


def mask_value(value: str) -> str:
    """How a secret appears in reprs and messages: never in full."""
    return MASK if len(value) < 12 else value[:2] + MASK


class SecretStore:
    """Generates each named secret once per stack and masks all of them in text."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, name: str, nbytes: int = 18) -> str:
        """The secret called ``name``, generated on first use (URL-safe, no quoting needed)."""
        with self._lock:
            if name not in self._values:
                # token_hex: safe in URLs, shells, SQL literals and Redis/Vault configs.
                self._values[name] = _secrets.token_hex(nbytes)
            return self._values[name]

    def add(self, name: str, value: str) -> None:
        """Register a secret that came from elsewhere (e.g. a Vault secret_id) for masking."""
        with self._lock:
            self._values[name] = value

    def export(self) -> dict[str, str]:
        with self._lock:
            return dict(self._values)

    def load(self, values: dict[str, str]) -> None:
        with self._lock:
            self._values.update(values)

    def mask(self, text: str) -> str:
        """``text`` with every known secret replaced by its masked form."""
        with self._lock:
            values = sorted(self._values.values(), key=len, reverse=True)
        for value in values:
            if value and value in text:
                text = text.replace(value, mask_value(value))
        return text

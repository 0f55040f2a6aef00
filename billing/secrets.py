"""
Provider secrets at rest: Fernet-encrypted, and opaque once loaded.

A database dump alone does not reveal a secret: the column holds a Fernet token
whose key comes from ``FIELD_ENCRYPTION_KEYS`` in the environment. Loaded
values are ``Secret`` objects that print as a mask, so a secret cannot reach a
log line, a template or an exception message by accident; code that needs the
plaintext calls ``reveal()`` at the point of use.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.query_utils import DeferredAttribute

MASK = "********"


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        # The message of the original error would not contain the key, but
        # say plainly which setting is wrong rather than "Fernet key must be...".
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key."
        ) from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


class SecretDecryptionError(Exception):
    """The stored token does not decrypt with any configured key."""


class Secret:
    """An encrypted secret that never renders its plaintext."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token

    @classmethod
    def from_plaintext(cls, plaintext: str) -> Secret:
        return cls(fernet().encrypt(plaintext.encode()).decode())

    def reveal(self) -> str:
        try:
            return fernet().decrypt(self.token.encode()).decode()
        except InvalidToken:
            raise SecretDecryptionError(
                "A stored secret does not decrypt with FIELD_ENCRYPTION_KEYS; "
                "was the key rotated without keeping the old one?"
            ) from None

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)


class SecretDescriptor(DeferredAttribute):
    """Encrypt on assignment, so a model instance never holds the plaintext."""

    def __set__(self, instance: models.Model, value: Any) -> None:
        if isinstance(value, str):
            value = Secret.from_plaintext(value) if value else None
        instance.__dict__[self.field.attname] = value


class EncryptedSecretField(models.TextField):
    """
    A text column holding a Fernet token; the attribute is a ``Secret``.

    Assigning a plain ``str`` encrypts it at once. Empty means "not set".
    """

    descriptor_class = SecretDescriptor

    def from_db_value(self, value: str | None, expression: Any, connection: Any):
        return Secret(value) if value else None

    def to_python(self, value: Any) -> Secret | str | None:
        if value in (None, "") or isinstance(value, Secret | str):
            return value or None
        raise TypeError(f"Cannot store {type(value).__name__} as a secret.")

    def get_prep_value(self, value: Any) -> str:
        value = self.to_python(value)
        if value is None:
            return ""
        if isinstance(value, str):
            value = Secret.from_plaintext(value)
        return value.token

    def value_to_string(self, obj: models.Model) -> str:
        # Serializers (dumpdata) get the token, never the plaintext.
        return self.get_prep_value(self.value_from_object(obj))

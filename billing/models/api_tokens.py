"""
Per-tenant API tokens: a role for a client of the REST API, never a user.

Only a SHA-256 digest of the secret is stored; the token itself is shown
once, when it is created (``billing.services.api_token_create``). A token is
revoked, never deleted, so the audit log can always name the token behind an
API action.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from billing.models.tenants import Membership
from billing.tenancy import TenantOwnedModel


class ApiToken(TenantOwnedModel):
    name = models.CharField(max_length=100, help_text="Who or what uses it.")
    role = models.CharField(
        max_length=16, choices=Membership.Role.choices, default=Membership.Role.VIEWER
    )
    # The token's first characters, to tell tokens apart in lists and logs
    # without the secret.
    prefix = models.CharField(max_length=32)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Updated at most once a minute (``api_tokens.TOUCH_EVERY``): a write per
    # request would cost every cached read a round trip.
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=["viewer", "operator", "admin"]),
                name="api_token_role_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

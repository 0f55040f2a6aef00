"""
Who is calling the REST API, and what their token's role lets them do.

``TenantRLSMiddleware`` checks the bearer token before any view runs and
leaves the verdict on the request; ``TokenAuth`` turns it into a 401 or 403
with a message a client can act on, and ``scoped_to_token_tenant`` runs a
view in a transaction that row-level security scopes to the token's tenant
alone. A session cookie is no credential here: the API is for programs, the
admin for people.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest
from ninja.errors import AuthenticationError, HttpError
from ninja.security import HttpBearer

from billing.api_tokens import ApiClient, api_token_authenticate
from billing.audit import Actor
from billing.models import Membership
from billing.tenancy import tenant_context

API_PREFIX = "/api/"
# The roles a role includes: an admin may do what an operator may, and so on.
ROLE_RANK = {
    Membership.Role.VIEWER: 0,
    Membership.Role.OPERATOR: 1,
    Membership.Role.ADMIN: 2,
}

NO_CREDENTIALS = (
    "Authentication credentials were not provided: "
    "send the header 'Authorization: Bearer <token>'."
)
INVALID_TOKEN = "Invalid or revoked API token."  # noqa: S105 (a message)


def bearer_token(request: HttpRequest) -> str | None:
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    return raw.strip()


def api_request_authenticate(request: HttpRequest) -> int | None:
    """
    Check the request's token; set ``request.api_client`` (None when
    refused) and ``request.api_auth_error``. Returns the token's tenant.
    """
    request.api_client = None
    raw = bearer_token(request)
    request.api_auth_error = NO_CREDENTIALS if raw is None else INVALID_TOKEN
    if raw is None:
        return None
    request.api_client = api_token_authenticate(raw=raw)
    return request.api_client.tenant_id if request.api_client else None


class TokenAuth(HttpBearer):
    """
    The token the middleware accepted, if its role includes ``role``: a 401
    or 403 otherwise, before the request's input is even read. A bearer
    scheme in the OpenAPI document.
    """

    def __init__(self, role: str = Membership.Role.VIEWER) -> None:
        super().__init__()
        self.role = role

    def __call__(self, request: HttpRequest) -> ApiClient:
        client = getattr(request, "api_client", None)
        if client is None:
            raise AuthenticationError(401, request.api_auth_error)
        if not client.tenant_active:
            raise HttpError(403, "The tenant of this token is suspended.")
        if ROLE_RANK[client.role] < ROLE_RANK[self.role]:
            raise HttpError(
                403,
                f"This token's role is {client.role}; this needs {self.role} or above.",
            )
        return client

    def authenticate(self, request: HttpRequest, token: str) -> ApiClient | None:
        raise NotImplementedError("TenantRLSMiddleware checks the token.")


def scoped_to_token_tenant(view: Callable) -> Callable:
    """
    A router's decorator: the view's database work in one transaction that
    row-level security scopes to the token's tenant. An error raised in the
    view rolls back everything it wrote.
    """

    @wraps(view)
    def scoped(request: HttpRequest, *args, **kwargs):
        with tenant_context([request.auth.tenant_id]):
            return view(request, *args, **kwargs)

    return scoped


def api_actor(request: HttpRequest) -> Actor:
    return Actor.api(
        request.auth.token_id,
        correlation_id=request.headers.get("X-Request-Id", "")[:64],
    )

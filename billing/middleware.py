"""Scope each request's database work to the tenants its user may see."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from billing.api_auth import API_PREFIX, api_request_authenticate
from billing.health import HEALTH_PATH
from billing.models import Tenant
from billing.selectors import tenant_ids_for_user
from billing.tenancy import tenant_context


class TenantRLSMiddleware:
    """
    Wrap the view in ``tenant_context`` for the user's tenants.

    Sets ``request.tenant_ids`` (None: every tenant, for superusers) so that
    admin ``get_queryset`` and the API filter with the same list RLS enforces.
    API requests are scoped by their bearer token instead (``_api_call``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(API_PREFIX):
            return self._api_call(request)
        if request.path_info == HEALTH_PATH:
            # Its own transactions, so that it answers when the database
            # does not.
            return self.get_response(request)
        tenant_ids = tenant_ids_for_user(user=request.user)
        request.tenant_ids = tenant_ids
        # The web role cannot lift RLS, not even for a superuser: name every
        # tenant instead (the tenant table itself has no RLS).
        scope = (
            tenant_ids
            if tenant_ids is not None
            else list(Tenant.objects.values_list("pk", flat=True))
        )
        with tenant_context(scope):
            return self.get_response(request)

    def _api_call(self, request: HttpRequest) -> HttpResponse:
        """
        An API client's scope is its token's tenant, whoever the session
        names. The request runs in no transaction: a cached answer needs
        none, and each API view scopes its own database work to the token's
        tenant (``billing.api_auth.scoped_to_token_tenant``); work outside
        such a scope sees no tenant's rows.
        """
        tenant_id = api_request_authenticate(request)
        request.tenant_ids = [] if tenant_id is None else [tenant_id]
        return self.get_response(request)

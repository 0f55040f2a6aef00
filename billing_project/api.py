"""
The REST API, version 1: Django Ninja, its OpenAPI document at
/api/v1/openapi.json and its docs at /api/v1/docs.

Django Ninja over Django REST framework with drf-spectacular: the pydantic
schemas that validate a request and shape a response are the ones the
OpenAPI document is generated from, so the document cannot drift from the
code (schemathesis checks it against the served API in ``make test``), with
one package instead of two and pydantic, which the langfuse client already
brings. Handlers stay plain functions calling services, as the styleguide
asks of views.
"""

from ninja import NinjaAPI

from anomalies.api import router as anomalies_router
from anomalies.services import InvalidTransition
from billing.api import router as usage_router
from billing.api_auth import TokenAuth
from billing.api_errors import install_error_handlers
from billing.services import InvalidTransition as TenantInvalidTransition

api = NinjaAPI(
    title="Billing API",
    version="1",
    description=(
        "Cost anomalies, incidents and usage of one tenant: the tenant of the "
        "bearer token. Tokens are created in the admin (API tokens), with a "
        "role: viewer reads, operator also reviews anomalies and incidents. "
        "Money is a decimal string in US dollars."
    ),
    auth=TokenAuth(),
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url="/docs",
)
install_error_handlers(api, conflicts=(InvalidTransition, TenantInvalidTransition))
api.add_router("", anomalies_router)
api.add_router("", usage_router)

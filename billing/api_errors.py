"""
The REST API's errors: one JSON shape for all of them, 400 for bad input.

``{"detail": "...", "errors": [{"field": "query.status", "message": "..."}]}``:
``detail`` says what went wrong, ``errors`` which field, when one did. Django
Ninja answers invalid input with 422 by default; a client of this API gets
400, and unknown query parameters are refused rather than ignored (a typo in
a filter must not silently return everything).
"""

from __future__ import annotations

import json
import logging

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError

from billing.api_schemas import ErrorOut

logger = logging.getLogger(__name__)


class BadRequest(Exception):
    """Input that fails a rule no schema can state (a range, a cursor)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# The statuses every authenticated operation may answer besides its own.
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut}
NOT_FOUND = {404: ErrorOut}
CONFLICT = {409: ErrorOut}


def reject_unknown_params(request: HttpRequest, schema: type[Schema]) -> None:
    """A query parameter the operation does not know is an error."""
    known = set(schema.model_fields)
    unknown = sorted(set(request.GET) - known)
    if unknown:
        takes = f"known: {', '.join(sorted(known))}" if known else "it takes none"
        raise BadRequest(
            f"query.{unknown[0]}", f"Unknown query parameter {unknown[0]!r}; {takes}."
        )


def _field(error: dict, body: object) -> str:
    parts = [str(part) for part in error.get("loc", ())]
    if parts[:1] == ["body"]:
        # Ninja nests the body under its argument's name, and a union told
        # apart by a field names the variant next: "body.payload.resolved.x"
        # is the body's "x".
        parts = ["body", *parts[2:]]
        values = body.values() if isinstance(body, dict) else ()
        if len(parts) > 2 and parts[1] in [str(value) for value in values]:
            del parts[1]
        if error.get("type", "").startswith("union_tag_"):
            parts.append(error["ctx"]["discriminator"].strip("'"))
    return ".".join(parts)


def _message(error: dict) -> str:
    # A model validator's own message, without pydantic's "Value error, ".
    return error.get("msg", "").removeprefix("Value error, ")


def _error(
    api: NinjaAPI,
    request: HttpRequest,
    status: int,
    detail: str,
    errors: list[dict] | None = None,
) -> HttpResponse:
    body = {"detail": detail, "errors": errors or []}
    response = api.create_response(request, body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def install_error_handlers(
    api: NinjaAPI, *, conflicts: tuple[type[Exception], ...]
) -> None:
    """
    Every error of ``api`` in the one shape. ``conflicts`` are the services'
    "not in a state that allows this" exceptions: 409, with their message.
    """

    @api.exception_handler(ValidationError)
    def invalid(request, exc: ValidationError) -> HttpResponse:
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            body = None
        errors = [
            {"field": _field(error, body), "message": _message(error)}
            for error in exc.errors
        ]
        return _error(api, request, 400, "Invalid request.", errors)

    @api.exception_handler(BadRequest)
    def bad_request(request, exc: BadRequest) -> HttpResponse:
        errors = [{"field": exc.field, "message": exc.message}]
        return _error(api, request, 400, "Invalid request.", errors)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request, exc: AuthenticationError) -> HttpResponse:
        return _error(api, request, 401, exc.message)

    @api.exception_handler(HttpError)
    def http_error(request, exc: HttpError) -> HttpResponse:
        if exc.status_code == 400:  # Ninja's own: a body that is not JSON
            errors = [{"field": "body", "message": exc.message}]
            return _error(api, request, 400, "Invalid request.", errors)
        return _error(api, request, exc.status_code, exc.message)

    @api.exception_handler(Http404)
    def not_found(request, exc: Http404) -> HttpResponse:
        return _error(api, request, 404, "Not found.")

    @api.exception_handler(Exception)
    def server_error(request, exc: Exception) -> HttpResponse:
        # JSON like every other error; the view's transaction, which the
        # error left, is rolled back already.
        logger.error("API error on %s %s", request.method, request.path, exc_info=exc)
        return _error(api, request, 500, "Internal server error.")

    def conflict(request, exc: Exception) -> HttpResponse:
        return _error(api, request, 409, str(exc))

    for exception in conflicts:
        api.add_exception_handler(exception, conflict)

"""
The project's URLs: the admin, the REST API (``billing_project.api``), the
health check, and the RQ dashboard for superusers only.

django-rq lets in any staff user (``staff_member_required``), but its pages
show every tenant's jobs, their arguments and their errors, and let one
delete or requeue them: platform work, as the analytics runs are. Tenant
staff get a 403 there; the admin index links to it for superusers.
"""

from collections.abc import Callable
from functools import wraps

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, include, path, reverse
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns

from billing.views import health
from billing_project.api import api

View = Callable[..., HttpResponse]


def superuser_required(view: View) -> View:
    """Send the signed-out to the admin login, refuse everyone but superusers."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (request.user.is_active and request.user.is_superuser):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper


def no_staff_session(view: View) -> View:
    """
    The JSON stats and metrics: a monitor's bearer token (RQ_API_TOKEN)
    still works, checked by the view; a signed-in user must be a superuser,
    as django-rq would take any staff session instead.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        user = request.user
        if user.is_authenticated and not (user.is_active and user.is_superuser):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper


def _wrapped(
    patterns: list[URLPattern], wrap: Callable[[View], View]
) -> list[URLPattern]:
    return [
        URLPattern(p.pattern, wrap(p.callback), p.default_args, p.name)
        for p in patterns
    ]


rq_urlpatterns = [
    *_wrapped(get_api_urlpatterns(), no_staff_session),
    *get_admin_urlpatterns(view_wrapper=superuser_required),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("health", health, name="health"),
    path("django-rq/", include((rq_urlpatterns, "django_rq"))),
]

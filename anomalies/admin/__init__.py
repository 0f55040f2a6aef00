"""
The anomalies admin; importing it registers the models.

Incidents come before cost anomalies wherever the admin lists the app's
models (index, app page, sidebar): an operator reviews an incident once, and
opens its anomalies from there. Django sorts models by name, which would put
them the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import admin
from django.http import HttpRequest

from anomalies.admin import cost_anomalies, incidents

__all__ = ["cost_anomalies", "incidents"]

# The app's models in the order an operator works through them; any other
# keeps Django's alphabetical place after these.
MODEL_ORDER = ["Incident", "CostAnomaly"]


def incidents_first(get_app_list: Callable[..., list[dict]]) -> Callable:
    """Wrap an admin site's ``get_app_list`` to list the app's models in MODEL_ORDER."""

    @wraps(get_app_list)
    def app_list(request: HttpRequest, app_label: str | None = None) -> list[dict]:
        apps = get_app_list(request, app_label)
        for app in apps:
            if app["app_label"] == "anomalies":
                # A stable sort: the rest stay in Django's order.
                app["models"].sort(
                    key=lambda m: (
                        MODEL_ORDER.index(m["object_name"])
                        if m["object_name"] in MODEL_ORDER
                        else len(MODEL_ORDER)
                    )
                )
        return apps

    return app_list


# The index, the app page and the sidebar (each_context) all ask the site's
# get_app_list, so this one place orders all three.
admin.site.get_app_list = incidents_first(admin.site.get_app_list)

"""
Admin for cost anomalies: review them where they are listed.

Acknowledge, resolve and reopen are bulk actions with an intermediate page, as
Django's ``delete_selected`` is: the action renders a form listing the
selected anomalies, the form posts back to the same action, and the action
calls the service once per anomaly. The change page offers the transitions
valid for the anomaly's status as buttons that lead to the same form for that
one anomaly. "Assign to me" needs no input and acts at once.

Who may act is the user's Membership role on the anomaly's tenant, not a
Django model permission: operators and tenant admins review, viewers look,
superusers may do everything. Every status change goes through
``anomalies.services`` (conditional UPDATE + audit row), so when two
operators act at once the second one gets a warning saying what the anomaly
already is, never a second transition or an error page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from anomalies.models import AnomalyStatus, CostAnomaly, ResolutionReason
from anomalies.services import (
    ACKNOWLEDGEABLE,
    REOPENABLE,
    RESOLVABLE,
    InvalidTransition,
    anomaly_acknowledge,
    anomaly_assign,
    anomaly_reopen,
    anomaly_resolve,
)
from billing.admin.base import (
    OPERATE_ROLES,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
    request_actor,
    tenant_ids_acting_as,
)

# The Membership roles that may review anomalies (superusers always may).
REVIEW_ROLES = OPERATE_ROLES


@dataclass(frozen=True)
class Transition:
    name: str  # the admin action's name, and the button's URL segment
    label: str  # "Resolve"
    past: str  # "resolved", for messages
    done: str  # the status afterwards
    allowed_from: tuple[str, ...]
    service: Callable[..., CostAnomaly]
    # Resolving takes a reason from ResolutionReason; reopening must say why
    # in the note (the model keeps reasons for resolutions only).
    needs_reason: bool = False
    needs_note: bool = False


TRANSITIONS = {
    t.name: t
    for t in [
        Transition(
            "acknowledge",
            "Acknowledge",
            "acknowledged",
            AnomalyStatus.ACKNOWLEDGED,
            ACKNOWLEDGEABLE,
            anomaly_acknowledge,
        ),
        Transition(
            "resolve",
            "Resolve",
            "resolved",
            AnomalyStatus.RESOLVED,
            RESOLVABLE,
            anomaly_resolve,
            needs_reason=True,
        ),
        Transition(
            "reopen",
            "Reopen",
            "reopened",
            AnomalyStatus.OPEN,
            REOPENABLE,
            anomaly_reopen,
            needs_note=True,
        ),
    ]
}


class ReviewForm(forms.Form):
    reason = forms.ChoiceField(
        choices=[("", "---------"), *ResolutionReason.choices], required=False
    )
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        required=False,
        help_text="Kept in the audit log with the change.",
    )

    def __init__(self, *args, transition: Transition, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if transition.needs_reason:
            self.fields["reason"].required = True
        else:
            del self.fields["reason"]
        if transition.needs_note:
            self.fields["note"].required = True
            self.fields["note"].help_text = "Why it needs another look."


def review_tenant_ids(request: HttpRequest) -> set[int] | None:
    """Tenants whose anomalies the user may review; None means every tenant."""
    return tenant_ids_acting_as(request, REVIEW_ROLES)


def count(n: int) -> str:
    return f"{n} anomaly" if n == 1 else f"{n} anomalies"


def refusal(transition: Transition, anomaly: CostAnomaly) -> str:
    """Why a transition did not happen, from the anomaly's current status."""
    if anomaly.status == transition.done:
        return f"“{anomaly}” is already {anomaly.status}: left as it is."
    return (
        f"“{anomaly}” is {anomaly.status}: only an anomaly that is "
        f"{' or '.join(transition.allowed_from)} can be {transition.past}."
    )


@admin.register(CostAnomaly)
class CostAnomalyAdmin(ReadOnlyAdminMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "period_start",
        "tenant",
        "anomaly_type",
        "scope_type",
        "project_id",
        "scope_id",
        "observed",
        "expected",
        "ratio",
        "status",
    ]
    list_filter = ["status", "anomaly_type", "scope_type", TenantFilter]
    search_fields = ["scope_id", "project_id"]
    date_hierarchy = "period_start"
    list_select_related = ["tenant"]
    actions = ["acknowledge", "resolve", "reopen", "assign_to_me"]
    review_template = "admin/anomalies/costanomaly/review_confirmation.html"

    # Permissions -----------------------------------------------------------

    def has_review_permission(self, request: HttpRequest, obj=None) -> bool:
        if not self.has_view_permission(request, obj):
            return False
        tenant_ids = review_tenant_ids(request)
        if tenant_ids is None:
            return True
        return obj.tenant_id in tenant_ids if obj is not None else bool(tenant_ids)

    def _check_review(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Every selected anomaly must be in a tenant the user reviews."""
        tenant_ids = review_tenant_ids(request)
        if (
            tenant_ids is not None
            and queryset.exclude(tenant_id__in=tenant_ids).exists()
        ):
            raise PermissionDenied

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # Django answers an action it does not offer with "No action
        # selected" (or ignores it when it offers none): a forged POST is a 403.
        if request.method == "POST":
            requested = set(request.POST.getlist("action")) - {""}
            if requested - set(self.get_actions(request)):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)

    # Actions ---------------------------------------------------------------

    @admin.action(description="Acknowledge selected anomalies", permissions=["review"])
    def acknowledge(self, request, queryset):
        return self._review(request, queryset, TRANSITIONS["acknowledge"])

    @admin.action(description="Resolve selected anomalies", permissions=["review"])
    def resolve(self, request, queryset):
        return self._review(request, queryset, TRANSITIONS["resolve"])

    @admin.action(description="Reopen selected anomalies", permissions=["review"])
    def reopen(self, request, queryset):
        return self._review(request, queryset, TRANSITIONS["reopen"])

    @admin.action(description="Assign selected anomalies to me", permissions=["review"])
    def assign_to_me(self, request, queryset) -> None:
        self._check_review(request, queryset)
        assigned = 0
        for anomaly in queryset.select_related("tenant"):
            try:
                anomaly_assign(
                    anomaly_id=anomaly.pk,
                    actor=request_actor(request),
                    assignee=request.user,
                )
                assigned += 1
            except InvalidTransition:
                anomaly.refresh_from_db()
                self.message_user(
                    request,
                    f"“{anomaly}” is {anomaly.status}: not assigned.",
                    messages.WARNING,
                )
        if assigned:
            self.message_user(request, f"{count(assigned)} assigned to you.")

    def _review(self, request, queryset, transition: Transition):
        """The intermediate page on the first POST, the transitions on the second."""
        self._check_review(request, queryset)
        anomalies = list(queryset.select_related("tenant", "assignee"))
        if not anomalies:
            self.message_user(
                request,
                "None of the selected anomalies is yours to change.",
                messages.WARNING,
            )
            return None
        form = ReviewForm(
            request.POST if request.POST.get("post") == "yes" else None,
            transition=transition,
        )
        if not form.is_valid():
            return self._render_review(request, transition, anomalies, form)
        reason = form.cleaned_data.get("reason")
        extra = {"reason": reason} if transition.needs_reason else {}
        done = 0
        for anomaly in anomalies:
            try:
                transition.service(
                    anomaly_id=anomaly.pk,
                    actor=request_actor(request),
                    note=form.cleaned_data["note"],
                    **extra,
                )
                done += 1
            except InvalidTransition:
                # Someone else got there first (or it was never valid):
                # say what it is now, as the service's UPDATE saw it.
                anomaly.refresh_from_db()
                self.message_user(
                    request, refusal(transition, anomaly), messages.WARNING
                )
        if done:
            why = f" ({ResolutionReason(reason).label})" if reason else ""
            self.message_user(
                request,
                f"{transition.past.capitalize()} {count(done)}{why}.",
                messages.SUCCESS,
            )
        return None

    def _render_review(self, request, transition, anomalies, form) -> HttpResponse:
        changeable = [a for a in anomalies if a.status in transition.allowed_from]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{transition.label} cost anomalies",
            "opts": self.opts,
            "transition": transition,
            "form": form,
            "changeable": changeable,
            "unchanged": [a for a in anomalies if a not in changeable],
            "anomalies": anomalies,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.review_template, context)

    # Change page buttons ---------------------------------------------------

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}_review"
        return [
            path(
                "<int:object_id>/review/<slug:transition>/",
                self.admin_site.admin_view(self.review_view),
                name=name,
            ),
            *super().get_urls(),
        ]

    def review_view(self, request, object_id: int, transition: str):
        """One anomaly through the same intermediate page as the bulk action."""
        if transition not in TRANSITIONS:
            raise Http404
        queryset = self.get_queryset(request).filter(pk=object_id)
        anomaly = queryset.first()
        if anomaly is None:
            raise Http404
        if not self.has_review_permission(request, anomaly):
            raise PermissionDenied
        response = self._review(request, queryset, TRANSITIONS[transition])
        if response is None:
            return HttpResponseRedirect(
                reverse("admin:anomalies_costanomaly_change", args=[anomaly.pk])
            )
        return response

    def review_buttons(self, request, obj: CostAnomaly) -> list[dict]:
        if not self.has_review_permission(request, obj):
            return []
        return [
            {
                "name": t.name,
                "label": t.label,
                "url": reverse(
                    "admin:anomalies_costanomaly_review", args=[obj.pk, t.name]
                ),
            }
            for t in TRANSITIONS.values()
            if obj.status in t.allowed_from
        ]

    def render_change_form(
        self, request, context, add=False, change=False, form_url="", obj=None
    ):
        if obj is not None:
            context["review_buttons"] = self.review_buttons(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

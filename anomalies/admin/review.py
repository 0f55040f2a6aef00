"""
Reviewing anomalies and incidents from the admin: acknowledge, resolve,
reopen, and for anomalies assign.

Each is a bulk action with an intermediate page, as Django's
``delete_selected`` is: the action renders a form listing the selected rows,
the form posts back to the same action, and the action calls the service
once per row. The change page offers the reviews valid for the row's status
as buttons that lead to the same form for that one row. "Assign to me" needs
no input and acts at once. ``ReviewPageMixin`` is that machinery for any
model with a tenant and a review status; ``ReviewActionsMixin`` is the
anomaly admin's actions on it, ``anomalies.admin.incidents`` the incident
admin's.

Who may act is the user's Membership role on the anomaly's tenant, on top
of the model's view permission: operators and tenant admins review, viewers look,
superusers may do everything. Every change goes through
``anomalies.services`` (a locked, conditional UPDATE + audit row), so when
two operators act at once the second one gets a warning saying what the
anomaly already is, never a second transition or an error page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    QueryDict,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse

from anomalies.models import AnomalyStatus, ResolutionReason
from anomalies.services import (
    ACKNOWLEDGEABLE,
    ASSIGNABLE,
    ASSIGNEE_ROLES,
    REOPENABLE,
    RESOLVABLE,
    InvalidTransition,
    anomaly_acknowledge,
    anomaly_assign,
    anomaly_reopen,
    anomaly_resolve,
)
from billing.admin.base import OPERATE_ROLES, request_actor, tenant_ids_acting_as
from billing.audit import Actor
from billing.charts import usd
from billing.models import Membership

# The Membership roles that may review anomalies (superusers always may).
REVIEW_ROLES = OPERATE_ROLES


class ReviewForm(forms.Form):
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        required=False,
        help_text="Kept in the audit log with the change.",
    )


class ResolveForm(ReviewForm):
    reason = forms.ChoiceField(choices=[("", "---------"), *ResolutionReason.choices])
    field_order = ["reason", "note"]


class ReopenForm(ReviewForm):
    # The model keeps reasons for resolutions only: a reopening says why here.
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why it needs another look; kept in the audit log.",
    )


class AssignForm(ReviewForm):
    assignee = forms.ModelChoiceField(queryset=get_user_model().objects.none())
    field_order = ["assignee", "note"]

    def __init__(self, *args, tenant_ids: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = colleagues(tenant_ids)


def colleagues(tenant_ids: set[int]):
    """Users who may review anomalies in every one of ``tenant_ids``."""
    users = get_user_model().objects.filter(is_active=True).order_by("username")
    for tenant_id in tenant_ids:
        users = users.filter(
            pk__in=Membership.objects.filter(
                tenant_id=tenant_id, role__in=ASSIGNEE_ROLES
            ).values("user_id")
        )
    return users


@dataclass(frozen=True)
class Review:
    name: str  # the admin action's name, and the button's URL segment
    label: str  # "Resolve"
    past: str  # "resolved", for messages
    done: str | None  # the status afterwards (None: unchanged)
    allowed_from: tuple[str, ...]
    form_class: type[ReviewForm]
    # Calls the service for one row (an anomaly, an incident) with the
    # form's cleaned data.
    apply: Callable[[int, Actor, dict], Any]


def status_reviews(
    *, acknowledge: Callable, resolve: Callable, reopen: Callable, id_field: str
) -> dict[str, Review]:
    """
    Acknowledge, resolve and reopen, each calling its service with the row's
    id as ``id_field``: the anomalies' and the incidents' alike.
    """
    reviews = [
        Review(
            "acknowledge",
            "Acknowledge",
            "acknowledged",
            AnomalyStatus.ACKNOWLEDGED,
            ACKNOWLEDGEABLE,
            ReviewForm,
            lambda pk, actor, data: acknowledge(
                **{id_field: pk}, actor=actor, note=data["note"]
            ),
        ),
        Review(
            "resolve",
            "Resolve",
            "resolved",
            AnomalyStatus.RESOLVED,
            RESOLVABLE,
            ResolveForm,
            lambda pk, actor, data: resolve(
                **{id_field: pk},
                actor=actor,
                reason=data["reason"],
                note=data["note"],
            ),
        ),
        Review(
            "reopen",
            "Reopen",
            "reopened",
            AnomalyStatus.OPEN,
            REOPENABLE,
            ReopenForm,
            lambda pk, actor, data: reopen(
                **{id_field: pk}, actor=actor, note=data["note"]
            ),
        ),
    ]
    return {review.name: review for review in reviews}


REVIEWS = {
    **status_reviews(
        acknowledge=anomaly_acknowledge,
        resolve=anomaly_resolve,
        reopen=anomaly_reopen,
        id_field="anomaly_id",
    ),
    "assign": Review(
        "assign",
        "Assign",
        "assigned",
        None,
        ASSIGNABLE,
        AssignForm,
        lambda pk, actor, data: anomaly_assign(
            anomaly_id=pk,
            actor=actor,
            assignee=data["assignee"],
            note=data["note"],
        ),
    ),
}


def review_tenant_ids(request: HttpRequest) -> set[int] | None:
    """Tenants whose anomalies (and incidents) the user may review; None: all."""
    return tenant_ids_acting_as(request, REVIEW_ROLES)


# What the reviewed rows are called in messages: (one, many).
ANOMALY = ("anomaly", "anomalies")


def count(n: int, noun: tuple[str, str] = ANOMALY) -> str:
    return f"{n} {noun[0] if n == 1 else noun[1]}"


def refusal(review: Review, row: Any, noun: tuple[str, str] = ANOMALY) -> str:
    """Why a review did not happen, from the row's current status."""
    if row.status == review.done:
        return f"“{row}” is already {row.status}: left as it is."
    return (
        f"“{row}” is {row.status}: only an {noun[0]} that is "
        f"{' or '.join(review.allowed_from)} can be {review.past}."
    )


class ReviewPageMixin:
    """
    Review actions' intermediate page and the change page's buttons, for a
    model admin whose rows have a tenant and a review status. A subclass
    names its ``reviews`` and ``noun``, and says in ``review_apply`` what a
    confirmed review does and tells the user.
    """

    review_template = "admin/anomalies/costanomaly/review_confirmation.html"
    reviews: dict[str, Review]
    noun: tuple[str, str] = ANOMALY
    review_select_related: tuple[str, ...] = ("tenant",)

    def has_review_permission(self, request: HttpRequest, obj=None) -> bool:
        if not self.has_view_permission(request, obj):
            return False
        tenant_ids = review_tenant_ids(request)
        if tenant_ids is None:
            return True
        return obj.tenant_id in tenant_ids if obj is not None else bool(tenant_ids)

    def _check_review(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Every selected row must be in a tenant the user reviews."""
        tenant_ids = review_tenant_ids(request)
        if (
            tenant_ids is not None
            and queryset.exclude(tenant_id__in=tenant_ids).exists()
        ):
            raise PermissionDenied

    def _review(self, request: HttpRequest, queryset: QuerySet, review: Review):
        """The intermediate page on the first POST, the reviews on the second."""
        self._check_review(request, queryset)
        rows = list(queryset.select_related(*self.review_select_related))
        if not rows:
            self.message_user(
                request,
                f"None of the selected {self.noun[1]} is yours to change.",
                messages.WARNING,
            )
            return None
        form = self.review_form(
            review, rows, request.POST if request.POST.get("post") == "yes" else None
        )
        if not form.is_valid():
            return self._render_review(request, review, rows, form)
        self.review_apply(request, review, rows, form.cleaned_data)
        return None

    def review_form(
        self, review: Review, rows: list, data: QueryDict | None
    ) -> forms.Form:
        return review.form_class(data)

    def review_apply(
        self, request: HttpRequest, review: Review, rows: list, data: dict
    ) -> None:
        """Call the review's service for each row and tell the user how it went."""
        raise NotImplementedError

    def review_context(self, review: Review, rows: list) -> dict:
        """
        What the intermediate page shows beyond the rows; may also set on
        each row what its table needs (money as text, say).
        """
        return {}

    def _render_review(self, request, review, rows, form) -> HttpResponse:
        changeable = [row for row in rows if row.status in review.allowed_from]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{review.label} {self.opts.verbose_name_plural}",
            "opts": self.opts,
            "transition": review,
            "form": form,
            "noun": self.noun[0],
            "nouns": self.noun[1],
            "changeable": changeable,
            "unchanged": [row for row in rows if row not in changeable],
            "selected": rows,
            "submit_label": f"{review.label} {count(len(changeable), self.noun)}",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
            **self.review_context(review, rows),
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

    def review_view(
        self, request: HttpRequest, object_id: int, transition: str
    ) -> HttpResponse:
        """One row through the same intermediate page as the bulk action."""
        if transition not in self.reviews:
            raise Http404
        queryset = self.get_queryset(request).filter(pk=object_id)
        row = queryset.first()
        if row is None:
            raise Http404
        if not self.has_review_permission(request, row):
            raise PermissionDenied
        response = self._review(request, queryset, self.reviews[transition])
        if response is None:
            return HttpResponseRedirect(
                reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                    args=[row.pk],
                )
            )
        return response

    def review_buttons(self, request: HttpRequest, obj: Any) -> list[dict]:
        if not self.has_review_permission(request, obj):
            return []
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_review"
        return [
            {
                "name": r.name,
                "label": f"{r.label}…" if r.form_class is AssignForm else r.label,
                "url": reverse(name, args=[obj.pk, r.name]),
            }
            for r in self.reviews.values()
            if obj.status in r.allowed_from
        ]


class ReviewActionsMixin(ReviewPageMixin):
    """The anomaly admin's review actions, on ``ReviewPageMixin``."""

    reviews = REVIEWS
    review_select_related = ("tenant", "assignee")

    @admin.action(description="Acknowledge selected anomalies", permissions=["review"])
    def acknowledge(self, request, queryset):
        return self._review(request, queryset, REVIEWS["acknowledge"])

    @admin.action(description="Resolve selected anomalies", permissions=["review"])
    def resolve(self, request, queryset):
        return self._review(request, queryset, REVIEWS["resolve"])

    @admin.action(description="Reopen selected anomalies", permissions=["review"])
    def reopen(self, request, queryset):
        return self._review(request, queryset, REVIEWS["reopen"])

    @admin.action(description="Assign selected anomalies to…", permissions=["review"])
    def assign(self, request, queryset):
        return self._review(request, queryset, REVIEWS["assign"])

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
            except ValueError as exc:  # the role went away meanwhile
                self.message_user(request, str(exc), messages.WARNING)
        if assigned:
            self.message_user(request, f"{count(assigned)} assigned to you.")

    def review_form(
        self, review: Review, rows: list, data: QueryDict | None
    ) -> forms.Form:
        if review.form_class is AssignForm:
            return AssignForm(data, tenant_ids={a.tenant_id for a in rows})
        return review.form_class(data)

    def review_apply(
        self, request: HttpRequest, review: Review, rows: list, data: dict
    ) -> None:
        done = 0
        for anomaly in rows:
            try:
                review.apply(anomaly.pk, request_actor(request), data)
                done += 1
            except InvalidTransition:
                # Someone else got there first (or it was never valid):
                # say what it is now, as the service's UPDATE saw it.
                anomaly.refresh_from_db()
                self.message_user(request, refusal(review, anomaly), messages.WARNING)
            except ValueError as exc:  # an assignee who lost the role meanwhile
                self.message_user(request, str(exc), messages.WARNING)
        if done:
            self.message_user(
                request, self._success(review, done, data), messages.SUCCESS
            )

    def review_context(self, review: Review, rows: list) -> dict:
        for anomaly in rows:
            anomaly.money = (usd(anomaly.observed), usd(anomaly.expected))
        return {}

    @staticmethod
    def _success(review: Review, done: int, data: dict) -> str:
        if review.name == "assign":
            return f"Assigned {count(done)} to {data['assignee']}."
        reason = data.get("reason")
        why = f" ({ResolutionReason(reason).label})" if reason else ""
        return f"{review.past.capitalize()} {count(done)}{why}."

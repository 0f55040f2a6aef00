"""
Admin for incidents: the anomalies of a tenant's day that share a cause,
reviewed once.

One runaway trace is flagged for its agent, its project and its user, by
several rules (``anomalies.incidents``). The incident list is where an
operator starts: one line per cause, most money first, and acknowledging,
resolving or reopening an incident does the same to each of its members
through ``anomalies.services`` (one audit row per member, one for the
incident). The actions share the anomalies' intermediate page and role
checks (``anomalies.admin.review``).

The incident's page lists its members (each linked to its own page, which
explains it) and the incident's audit timeline, with the review buttons
valid for its status.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator
from rangefilter.filters import DateRangeQuickSelectListFilterBuilder

from anomalies.admin.cost_anomalies import (
    SHORT_TYPES,
    money_text,
    scope_text,
    timeline_entry,
)
from anomalies.admin.paging import CappedPaginator
from anomalies.admin.review import (
    ANOMALY,
    Review,
    ReviewPageMixin,
    count,
    refusal,
    status_reviews,
)
from anomalies.models import CostAnomaly, Incident, ResolutionReason
from anomalies.services import (
    IncidentReviewResult,
    InvalidTransition,
    incident_acknowledge,
    incident_reopen,
    incident_resolve,
)
from billing.admin.base import (
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantFilter,
    TenantScopedAdminMixin,
    request_actor,
)
from billing.charts import usd
from billing.models import AuditLog

INCIDENT = ("incident", "incidents")
# A title in a list row (a trace id and the scopes it hit); the whole one is
# on the incident's page.
TITLE_CHARS = 90
# Members named in the message about those an action left alone.
NAMED_MEMBERS = 3

# An incident's status is its members' (open while any is open, resolved
# when all are), so the statuses an incident action starts from are the
# ones its members' actions start from.
INCIDENT_REVIEWS = status_reviews(
    acknowledge=incident_acknowledge,
    resolve=incident_resolve,
    reopen=incident_reopen,
    id_field="incident_id",
)


def left_alone(review: Review, incident: Incident, members: list[CostAnomaly]) -> str:
    """The members of ``incident`` that ``review`` left as they were, and why."""
    names = [
        f"“{a}” ({'already ' if a.status == review.done else ''}{a.status})"
        for a in members[:NAMED_MEMBERS]
    ]
    if len(members) > NAMED_MEMBERS:
        names.append(f"{len(members) - NAMED_MEMBERS} more")
    return (
        f"In “{incident}”, {count(len(members))} left as "
        f"{'it is' if len(members) == 1 else 'they are'}: {', '.join(names)}."
    )


@admin.register(Incident)
class IncidentAdmin(
    ReviewPageMixin,
    OfferedActionsOnlyMixin,
    ReadOnlyAdminMixin,
    TenantScopedAdminMixin,
    admin.ModelAdmin,
):
    list_display = ["day", "tenant", "incident_title", "members", "money", "review"]
    list_display_links = ["day", "incident_title"]
    list_filter = [
        "status",
        TenantFilter,
        ("period_start", DateRangeQuickSelectListFilterBuilder(title="day")),
    ]
    search_fields = ["title"]
    search_help_text = "A trace, scope or rule in the incident's title (or part)."
    list_select_related = ["tenant"]
    paginator = CappedPaginator
    show_full_result_count = False
    actions = ["acknowledge", "resolve", "reopen"]
    fields = [
        "tenant",
        "title",
        "day",
        "status",
        "impact_money",
        "members",
        "created_at",
        "updated_at",
    ]

    reviews = INCIDENT_REVIEWS
    noun = INCIDENT
    review_template = "admin/anomalies/incident/review_confirmation.html"

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # As the anomaly queue: the columns need the whole 1400 px.
        extra_context = {"is_nav_sidebar_enabled": False, **(extra_context or {})}
        return super().changelist_view(request, extra_context)

    def history_view(self, request: HttpRequest, object_id: str, extra_context=None):
        # The audit log, not Django's LogEntry, holds an incident's story.
        incident = self.get_object(request, object_id)
        if incident is None:
            raise Http404
        url = reverse("admin:billing_auditlog_changelist")
        query = urlencode(
            {"object_type": incident._meta.label_lower, "object_id": incident.pk}
        )
        return HttpResponseRedirect(f"{url}?{query}")

    # Actions ---------------------------------------------------------------

    @admin.action(description="Acknowledge selected incidents", permissions=["review"])
    def acknowledge(self, request, queryset):
        return self._review(request, queryset, INCIDENT_REVIEWS["acknowledge"])

    @admin.action(description="Resolve selected incidents", permissions=["review"])
    def resolve(self, request, queryset):
        return self._review(request, queryset, INCIDENT_REVIEWS["resolve"])

    @admin.action(description="Reopen selected incidents", permissions=["review"])
    def reopen(self, request, queryset):
        return self._review(request, queryset, INCIDENT_REVIEWS["reopen"])

    def review_apply(
        self, request: HttpRequest, review: Review, rows: list, data: dict
    ) -> None:
        done, changed = 0, 0
        unchanged: dict[Incident, list[int]] = {}
        for incident in rows:
            # Only what the page offered: the services would also reopen
            # the one resolved member of an open incident, say.
            if incident.status not in review.allowed_from:
                self.message_user(
                    request, refusal(review, incident, INCIDENT), messages.WARNING
                )
                continue
            try:
                result: IncidentReviewResult = review.apply(
                    incident.pk, request_actor(request), data
                )
            except InvalidTransition:
                # Someone else got there first: say what it is now.
                incident.refresh_from_db()
                self.message_user(
                    request, refusal(review, incident, INCIDENT), messages.WARNING
                )
                continue
            done += 1
            changed += len(result.changed)
            if result.unchanged:
                unchanged[incident] = result.unchanged
        members = CostAnomaly.objects.in_bulk(
            [pk for pks in unchanged.values() for pk in pks]
        )
        for incident, pks in unchanged.items():
            self.message_user(
                request,
                left_alone(review, incident, [members[pk] for pk in pks]),
                messages.INFO,
            )
        if done:
            reason = data.get("reason")
            why = f" ({ResolutionReason(reason).label})" if reason else ""
            self.message_user(
                request,
                f"{review.past.capitalize()} {count(done, INCIDENT)} and "
                f"{count(changed, ANOMALY)} in {'it' if done == 1 else 'them'}{why}.",
                messages.SUCCESS,
            )

    def review_context(self, review: Review, rows: list) -> dict:
        # How many members each incident's review would change, in one query.
        statuses: dict[int, list[str]] = {}
        for incident_id, status in CostAnomaly.objects.filter(
            incident__in=rows
        ).values_list("incident_id", "status"):
            statuses.setdefault(incident_id, []).append(status)
        for incident in rows:
            members = statuses.get(incident.pk, [])
            incident.money = usd(incident.impact)
            incident.changing = sum(s in review.allowed_from for s in members)
            incident.member_total = len(members)
        return {}

    # List columns ----------------------------------------------------------

    def get_list_display(self, request: HttpRequest) -> list[str]:
        # Staff of one tenant would read its name on every row.
        tenant_ids = getattr(request, "tenant_ids", None)
        if tenant_ids is not None and len(tenant_ids) == 1:
            return [c for c in self.list_display if c != "tenant"]
        return self.list_display

    @admin.display(description="Day", ordering="period_start")
    def day(self, obj: Incident) -> str:
        return f"{obj.period_start:%Y-%m-%d}"

    @admin.display(description="Title", ordering="title")
    def incident_title(self, obj: Incident) -> str:
        return Truncator(obj.title).chars(TITLE_CHARS)

    @admin.display(description="Anomalies", ordering="anomaly_count")
    def members(self, obj: Incident) -> str:
        url = reverse("admin:anomalies_costanomaly_changelist")
        query = urlencode({"incident__id__exact": obj.pk})
        return format_html('<a href="{}?{}">{}</a>', url, query, obj.anomaly_count)

    @admin.display(description="Impact", ordering="-impact")
    def money(self, obj: Incident) -> str:
        return usd(obj.impact)

    @admin.display(description="Status", ordering="review_order")
    def review(self, obj: Incident) -> str:
        return obj.get_status_display()

    # Change page -----------------------------------------------------------

    @admin.display(description="Impact")
    def impact_money(self, obj: Incident) -> str:
        return usd(obj.impact)

    def render_change_form(
        self, request, context, add=False, change=False, form_url="", obj=None
    ):
        if obj is not None:
            context.update(self._members_and_timeline(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _members_and_timeline(self, request: HttpRequest, obj: Incident) -> dict:
        members = obj.anomalies.select_related("assignee").order_by(
            *CostAnomaly._meta.ordering
        )
        timeline = list(
            AuditLog.objects.filter(
                object_type=obj._meta.label_lower, object_id=str(obj.pk)
            )
            .select_related("actor")
            .order_by("created_at", "id")
        )
        return {
            "review_buttons": self.review_buttons(request, obj),
            "members": [
                {
                    "anomaly": a,
                    "kind": SHORT_TYPES[a.anomaly_type],
                    "scope": scope_text(a),
                    "observed_vs_expected": money_text(a),
                    "status": (
                        f"{a.get_status_display()} · {a.assignee}"
                        if a.assignee
                        else a.get_status_display()
                    ),
                }
                for a in members
            ],
            # An incident's audit rows name no assignee: no users to look up.
            "timeline": [timeline_entry(e, {}) for e in timeline],
        }

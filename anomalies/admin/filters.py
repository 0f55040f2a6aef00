"""
The anomaly changelist's own filters: whose anomalies, and one line per
incident. Their choices name nobody outside the user's tenants.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Exists, OuterRef, Q, QuerySet

from anomalies.models import CostAnomaly


class AssigneeFilter(admin.SimpleListFilter):
    title = "assignee"
    parameter_name = "assignee"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [("mine", "Mine"), ("none", "Nobody"), ("someone", "Someone")]

    def queryset(self, request, queryset) -> QuerySet:
        match self.value():
            case "mine":
                return queryset.filter(assignee=request.user)
            case "none":
                return queryset.filter(assignee__isnull=True)
            case "someone":
                return queryset.filter(assignee__isnull=False)
        return queryset


def incident_leads(queryset: QuerySet) -> QuerySet:
    """
    One anomaly per incident: the one the review queue puts first. A row is
    kept when no other member of its incident comes before it; a row outside
    any incident has none. The members are found through the index on the
    incident foreign key.
    """
    before = CostAnomaly.objects.filter(incident_id=OuterRef("incident_id")).filter(
        Q(review_order__lt=OuterRef("review_order"))
        | Q(review_order=OuterRef("review_order"), impact__gt=OuterRef("impact"))
        | Q(
            review_order=OuterRef("review_order"),
            impact=OuterRef("impact"),
            pk__gt=OuterRef("pk"),
        )
    )
    return queryset.filter(~Exists(before))


class IncidentFilter(admin.SimpleListFilter):
    """Group related anomalies: one line per incident, its other members counted."""

    title = "grouping"
    parameter_name = "group"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [("incident", "One line per incident")]

    def queryset(self, request, queryset) -> QuerySet:
        if self.value() == "incident":
            return incident_leads(queryset)
        return queryset

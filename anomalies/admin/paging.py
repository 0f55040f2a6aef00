"""
Paging the review queue without counting it.

Django's changelist counts every row its filters match to number the pages.
At a million anomalies that count is most of the page's time, and nobody
pages past the first hundred pages of a queue: they filter. The count stops
at ``COUNT_CAP`` rows and the page says "more than 10,000".
"""

from __future__ import annotations

from django.core.paginator import Paginator
from django.utils.functional import cached_property

COUNT_CAP = 10_000


class CappedPaginator(Paginator):
    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        """The matching rows, up to ``cap + 1`` (which reads "more than cap")."""
        return self.object_list.order_by().values("pk")[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap

    @property
    def cap_display(self) -> str:
        return f"{self.cap:,}"

"""
The price table: staff with the view permission read it; superusers edit it
(it prices every tenant). A row and its unit prices are saved together by
``model_price_save``, which audits the change; rows are never deleted, since
ledger entries name the row that priced them: end a row's validity instead.
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import construct_change_message
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html_join

from billing.admin.base import request_actor
from billing.models import ModelPrice, UnitPrice
from billing.money import exact_usd
from billing.price_table import (
    model_price_period,
    model_price_save,
    model_price_validate,
    unit_prices_validate,
)

MILLION = Decimal(1_000_000)


def per_million(price: Decimal) -> str:
    """A unit price as people quote it: dollars per million units."""
    return f"{exact_usd(price * MILLION)}/M"


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = ["model_name", "match_pattern", "valid_from", "valid_to", "note"]

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            model_price_validate(
                model_name=cleaned["model_name"],
                match_pattern=cleaned["match_pattern"],
                valid_from=cleaned.get("valid_from"),
                valid_to=cleaned.get("valid_to"),
                pk=self.instance.pk,
            )
        return cleaned


def kept_unit_prices(formset: forms.BaseInlineFormSet) -> dict[str, Decimal]:
    """The unit prices the formset keeps: filled in and not deleted."""
    return {
        form.cleaned_data["usage_key"]: form.cleaned_data["price"]
        for form in formset.forms
        if form.cleaned_data
        and not form.cleaned_data.get("DELETE")
        and form.cleaned_data.get("usage_key")
    }


class UnitPriceFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        if not any(form.errors for form in self.forms):
            unit_prices_validate(kept_unit_prices(self))


class UnitPriceInline(admin.TabularInline):
    model = UnitPrice
    formset = UnitPriceFormSet
    fields = ["usage_key", "price", "quoted"]
    readonly_fields = ["quoted"]
    extra = 2

    @admin.display(description="Per million")
    def quoted(self, obj: UnitPrice) -> str:
        return per_million(obj.price) if obj.price is not None else ""


class InForceFilter(admin.SimpleListFilter):
    title = "in force"
    parameter_name = "in_force"

    def lookups(self, request, model_admin) -> list[tuple[str, str]]:
        return [("now", "Now"), ("ended", "Ended"), ("future", "Not yet")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "ended":
            return queryset.filter(valid_to__lte=now)
        if self.value() == "future":
            return queryset.filter(valid_from__gt=now)
        if self.value() == "now":
            return queryset.exclude(valid_to__lte=now).exclude(valid_from__gt=now)
        return queryset


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    form = ModelPriceForm
    inlines = [UnitPriceInline]
    list_display = ["model_name", "match_pattern", "valid", "prices"]
    list_filter = [InForceFilter]
    search_fields = ["model_name", "match_pattern"]
    readonly_fields = ["created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("unit_prices")

    @admin.display(description="Valid (UTC)")
    def valid(self, obj: ModelPrice) -> str:
        return model_price_period(obj.valid_from, obj.valid_to)

    @admin.display(description="Prices")
    def prices(self, obj: ModelPrice) -> str:
        return format_html_join(
            ", ",
            "{} {}",
            (
                (unit.usage_key, per_million(unit.price))
                for unit in obj.unit_prices.all()
            ),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def construct_change_message(self, request, form, formsets, add=False):
        # The unit prices were saved by the service, not the formset; the
        # audit log says what changed in them.
        return construct_change_message(form, [], add)

    def save_model(self, request, obj, form, change) -> None:
        """Saved with its unit prices in ``save_related``, in one service call."""

    def save_related(self, request, form, formsets, change) -> None:
        # The forms ran the service's checks; the service runs them again
        # under the row lock (and Postgres' exclusion constraint backs them).
        (unit_prices,) = (f for f in formsets if isinstance(f, UnitPriceFormSet))
        model_price_save(
            price=form.instance,
            unit_prices=kept_unit_prices(unit_prices),
            actor=request_actor(request),
        )

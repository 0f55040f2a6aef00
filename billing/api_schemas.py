"""Schemas every part of the REST API shares: decimals, dates, the error body."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Annotated

from ninja import Schema
from pydantic import BeforeValidator, PlainSerializer

# DecimalString as a plain decimal string, never "0E-10": the JSON encoder's
# str(Decimal) keeps the exponent of a zero with ten places.
DecimalString = Annotated[
    Decimal,
    PlainSerializer(lambda value: format(value, "f"), return_type=str),
]

ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date(value: object) -> object:
    # Pydantic also takes 0 (the epoch) or a midnight datetime as a date:
    # the document says "format: date", so only that is one.
    if isinstance(value, str) and not ISO_DATE.fullmatch(value):
        raise ValueError("Expected a date as YYYY-MM-DD.")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]


class FieldError(Schema):
    field: str
    message: str


class ErrorOut(Schema):
    detail: str
    errors: list[FieldError] = []

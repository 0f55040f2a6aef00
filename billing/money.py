"""Amounts of money as people read them, to the last digit that matters."""

from decimal import Decimal


def exact_usd(amount: Decimal, *, signed: bool = False) -> str:
    """US dollars to the amount's last digit, at least to the cent: $0.0000075."""
    digits = max(2, -amount.normalize().as_tuple().exponent)
    sign = "-" if amount < 0 else ("+" if signed else "")
    return f"{sign}${abs(amount):,.{digits}f}"

"""Money parsing and formatting: exact, strict, and bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream_core.money import CURRENCY_EXPONENTS, MAX_MINOR, Money, MoneyError


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("100.00", "EUR", 10000),
        ("0.01", "USD", 1),
        ("5", "EUR", 500),
        ("1.5", "EUR", 150),
        ("1000", "JPY", 1000),
        ("1.234", "KWD", 1234),
        ("1.2", "BHD", 1200),
    ],
)
def test_parse(amount: str, currency: str, minor: int) -> None:
    assert Money.parse(amount, currency).amount_minor == minor


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("1.001", "EUR", "at most 2"),
        ("1.5", "JPY", "at most 0"),
        ("1e3", "EUR", "decimal"),
        ("-1.00", "EUR", "decimal"),
        (" 1.00", "EUR", "decimal"),
        ("01.00", "EUR", "decimal"),
        ("1.00", "XXX", "unknown currency"),
        ("1.00", "eur", "unknown currency"),
        ("1,00", "EUR", "decimal"),
        ("NaN", "EUR", "decimal"),
        ("", "EUR", "decimal"),
    ],
)
def test_parse_rejects(amount: str, currency: str, message: str) -> None:
    with pytest.raises(MoneyError, match=message):
        Money.parse(amount, currency)


def test_amount_bounded_by_bigint() -> None:
    with pytest.raises(MoneyError, match="too large"):
        Money.parse("999999999999999999.99", "EUR")


@given(
    st.integers(min_value=0, max_value=MAX_MINOR),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_format_parse_round_trip(minor: int, currency: str) -> None:
    money = Money(minor, currency)
    assert Money.parse(money.format(), currency) == money


def test_no_floats() -> None:
    with pytest.raises(MoneyError):
        Money(1.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(MoneyError):
        Money(True, "EUR")

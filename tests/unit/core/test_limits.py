"""The ceilings and text rules of paystream_core.limits: what storage and the ledger hold."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream_core import limits
from paystream_core.money import CURRENCY_EXPONENTS, Money, MoneyError


def test_every_ceiling_leaves_room_for_millions_of_payments_in_one_bigint_balance() -> None:
    assert set(limits.CURRENCY_MAX_MINOR) == set(CURRENCY_EXPONENTS)
    assert limits.LARGEST_MAX_MINOR == limits.MAX_AMOUNT_MINOR == 10**12
    assert limits.BIGINT_MAX // limits.LARGEST_MAX_MINOR == 9_223_372


@pytest.mark.parametrize(
    ("currency", "ceiling"),
    [("EUR", "10000000000.00"), ("JPY", "1000000000000"), ("KWD", "1000000000.000")],
)
def test_ceiling_in_major_units(currency: str, ceiling: str) -> None:
    assert limits.max_amount(currency) == ceiling
    assert Money.parse(ceiling, currency).amount_minor == limits.max_amount_minor(currency)


def test_check_amount() -> None:
    limits.check_amount(1, "EUR")
    limits.check_amount(10**12, "EUR")
    with pytest.raises(limits.LimitError, match=r"^amount: at most 10000000000.00 EUR"):
        limits.check_amount(10**12 + 1, "EUR")
    with pytest.raises(limits.LimitError, match=r"^amount: must be greater than zero"):
        limits.check_amount(0, "EUR")
    with pytest.raises(limits.LimitError, match=r"^currency: "):
        limits.check_amount(1, "XXX")
    # The amount the outside tester got accepted, and then stuck after the charge.
    with pytest.raises(limits.LimitError):
        limits.check_amount(Money.parse("92233720368547758.07", "EUR").amount_minor, "EUR")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("plain", None),
        ("ünïcødé and emoji 😀", None),
        ("a\x00b", "a control character (U+0000) at position 1"),
        ("tab\t", "a control character (U+0009) at position 3"),
        ("\n", "a control character (U+000A) at position 0"),
        ("del\x7f", "a control character (U+007F) at position 3"),
        ("c1\x85", "a control character (U+0085) at position 2"),
        ("x\ud800", "a lone surrogate (U+D800) at position 1"),
        ("\u00a0nbsp is text", None),
    ],
)
def test_forbidden_characters(text: str, found: str | None) -> None:
    assert limits.forbidden_character(text) == found
    if found is None:
        limits.check_text("field", text)
    else:
        with pytest.raises(limits.LimitError, match=r"^field: must not contain "):
            limits.check_text("field", text)


@given(st.text())
def test_the_published_pattern_agrees_with_the_check_except_for_surrogates(text: str) -> None:
    # hypothesis' text() has no lone surrogates, which no UTF-8 document can carry either
    allowed = re.fullmatch(limits.NO_CONTROL_PATTERN, text) is not None
    assert allowed == (limits.forbidden_character(text) is None)


_DECIMALS = st.from_regex(r"[0-9]{1,14}(\.[0-9]{1,4})?", fullmatch=True)


@given(
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
    _DECIMALS
    | st.sampled_from(
        [
            "1000000000000",
            "10000000000.00",
            "10000000000.01",
            "1000000000.000",
            "0.00",
            "0.001",
            "0.01",
        ]
    ),
)
def test_amount_pattern_matches_exactly_the_accepted_amounts(currency: str, amount: str) -> None:
    try:
        minor = Money.parse(amount, currency).amount_minor
        limits.check_amount(minor, currency)
        accepted = True
    except (MoneyError, limits.LimitError):
        accepted = False
    assert (re.fullmatch(limits.amount_pattern(currency), amount) is not None) == accepted

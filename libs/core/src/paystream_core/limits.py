"""What storage and the ledger can hold: amount ceilings per currency and text rules.

Everything answered 202 must be able to complete, so these limits are checked at the edge
(the ingest API) and again by the worker for commands produced straight to Kafka.

Amounts. Balances and ledger sums are PostgreSQL `bigint` (at most 2**63 - 1 minor units).
One payment may be at most `MAX_AMOUNT_MINOR` = 10**12 minor units in every currency, so
a single balance holds 9,223,372 maximum-size payments before it could overflow. The
ceiling is set in minor units because that is where the overflow happens; in major units
it is 10**(12 - exponent): 1,000,000,000,000 JPY (exponent 0), 10,000,000,000.00 EUR
(exponent 2), 1,000,000,000.000 KWD (exponent 3). `CURRENCY_MAX_MINOR` holds it per
currency, so one currency can get its own ceiling without changing the rule for others.

Text. PostgreSQL `text` cannot hold NUL, and no identifier, label or bank detail has a use
for any other control character either (they break logs, CSV exports and provider
requests). Every string a client sends is refused if it holds a Unicode control character
(category Cc: U+0000-U+001F, U+007F-U+009F; tab and newline included) or a lone surrogate
(U+D800-U+DFFF: not encodable as UTF-8, so neither Kafka nor PostgreSQL could take it).
"""

from __future__ import annotations

import re
from typing import Final

from paystream_core.money import CURRENCY_EXPONENTS

MAX_AMOUNT_MINOR: Final = 10**12
CURRENCY_MAX_MINOR: Final[dict[str, int]] = dict.fromkeys(CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR)
# The largest ceiling of any currency: the bound a JSON Schema can state without
# knowing the currency (the exact per-currency check is in code).
LARGEST_MAX_MINOR: Final = max(CURRENCY_MAX_MINOR.values())
BIGINT_MAX: Final = 2**63 - 1

# Text lengths (Unicode code points), the same at the edge and in the command schemas.
ACCOUNT_ID_MAX: Final = 64
IDEMPOTENCY_KEY_MAX: Final = 255
PAYMENT_METHOD_MAX: Final = 64
METADATA_KEY_MAX: Final = 64
METADATA_VALUE_MAX: Final = 512
METADATA_MAX_ENTRIES: Final = 32
HOLDER_NAME_MAX: Final = 140

# JSON Schema / OpenAPI form of the text rule for the control characters. Surrogates are
# not in it: they cannot occur in a UTF-8 document, only in code, which checks them.
NO_CONTROL_PATTERN: Final = r"^[^\x00-\x1F\x7F-\x9F]*$"
_FORBIDDEN: Final = re.compile(r"[\x00-\x1F\x7F-\x9F\uD800-\uDFFF]")


class LimitError(ValueError):
    """A value beyond what paystream can store; the message names the problem."""


def forbidden_character(text: str) -> str | None:
    """How the first control character or lone surrogate of `text` is called, or None."""
    found = _FORBIDDEN.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"{kind} (U+{ord(char):04X}) at position {found.start()}"


def check_text(field: str, text: str) -> None:
    """LimitError naming `field` if `text` holds a control character or a lone surrogate."""
    problem = forbidden_character(text)
    if problem is not None:
        raise LimitError(f"{field}: must not contain {problem}")


def max_amount_minor(currency: str) -> int:
    """The largest single amount of `currency`, in minor units (KeyError if unknown)."""
    return CURRENCY_MAX_MINOR[currency]


def max_amount(currency: str) -> str:
    """The ceiling as a decimal string in major units ("10000000000.00" for EUR)."""
    exponent = CURRENCY_EXPONENTS[currency]
    whole, fraction = divmod(max_amount_minor(currency), 10**exponent)
    return f"{whole}.{fraction:0{exponent}d}" if exponent else str(whole)


def check_amount(amount_minor: int, currency: str) -> None:
    """LimitError unless 0 < `amount_minor` <= the ceiling of a currency paystream knows."""
    if currency not in CURRENCY_MAX_MINOR:
        raise LimitError(f"currency: {currency!r} is not a supported ISO 4217 currency")
    if amount_minor <= 0:
        raise LimitError("amount: must be greater than zero")
    if amount_minor > CURRENCY_MAX_MINOR[currency]:
        raise LimitError(f"amount: at most {max_amount(currency)} {currency} per payment")


def amount_pattern(currency: str) -> str:
    """A regular expression matching exactly the decimal strings `Money.parse` accepts for
    `currency` that are > 0 and within its ceiling (for the OpenAPI document).

    Needs a ceiling that is a power of ten in major units (10**k): then "at most the
    ceiling" is "at most k integer digits, or the ceiling itself with a zero fraction"."""
    exponent = CURRENCY_EXPONENTS[currency]
    ceiling = max_amount_minor(currency)
    whole = ceiling // 10**exponent
    digits = len(str(whole)) - 1
    if ceiling % 10**exponent or whole != 10**digits:
        raise ValueError(f"{currency}: the ceiling is not a power of ten in major units")
    if exponent == 0:
        return rf"^([1-9][0-9]{{0,{digits - 1}}}|{whole})$"
    fraction = rf"(\.[0-9]{{1,{exponent}}})?"
    # "0.x" needs a fraction digit that is not zero: one branch per position of the first.
    small = "|".join(
        rf"0\.{'0' * i}[1-9]" + (rf"[0-9]{{0,{exponent - 1 - i}}}" if i < exponent - 1 else "")
        for i in range(exponent)
    )
    return rf"^([1-9][0-9]{{0,{digits - 1}}}{fraction}|{small}|{whole}(\.0{{1,{exponent}}})?)$"

"""Exact money: integer minor units plus an ISO 4217 currency, never float."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# ISO 4217 exponents for the currencies paystream accepts. A currency missing here is
# rejected rather than guessed: a wrong exponent moves money by a factor of 10 or 100.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AED": 2, "ARS": 2, "AUD": 2, "BGN": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2,
    "CLP": 0, "CNY": 2, "COP": 2, "CZK": 2, "DKK": 2, "EGP": 2, "EUR": 2, "GBP": 2,
    "GHS": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0, "JOD": 3,
    "JPY": 0, "KES": 2, "KRW": 0, "KWD": 3, "MAD": 2, "MXN": 2, "MYR": 2, "NGN": 2,
    "NOK": 2, "NZD": 2, "OMR": 3, "PEN": 2, "PHP": 2, "PKR": 2, "PLN": 2, "QAR": 2,
    "RON": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "TWD": 2,
    "UAH": 2, "UGX": 0, "USD": 2, "VND": 0, "XAF": 0, "XOF": 0, "ZAR": 2,
}  # fmt: skip

_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,18})(\.[0-9]{1,3})?$")


# amount_minor is a PostgreSQL bigint and a JSON Schema integer bounded to the same range.
MAX_MINOR = 2**63 - 1


class MoneyError(ValueError):
    """An amount or currency that cannot be represented exactly."""


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if self.currency not in CURRENCY_EXPONENTS:
            raise MoneyError(f"unknown currency {self.currency!r}")
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise MoneyError("amount_minor must be an integer")

    @classmethod
    def parse(cls, amount: str, currency: str) -> Money:
        """Parse a decimal string ("100.00") strictly: no exponent, sign or extra digits."""
        if currency not in CURRENCY_EXPONENTS:
            raise MoneyError(f"unknown currency {currency!r}")
        if not isinstance(amount, str) or not _AMOUNT.match(amount):
            raise MoneyError("amount must be a decimal string like '100.00'")
        exponent = CURRENCY_EXPONENTS[currency]
        _, _, fraction = amount.partition(".")
        if len(fraction) > exponent:
            raise MoneyError(f"{currency} allows at most {exponent} fraction digits")
        try:
            minor = int(Decimal(amount).scaleb(exponent))
        except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
            raise MoneyError("amount is not a number") from exc
        if minor > MAX_MINOR:
            raise MoneyError("amount is too large")
        return cls(minor, currency)

    def format(self) -> str:
        """The amount as a decimal string with the currency's exponent ("100.00")."""
        exponent = CURRENCY_EXPONENTS[self.currency]
        if exponent == 0:
            return str(self.amount_minor)
        sign = "-" if self.amount_minor < 0 else ""
        whole, frac = divmod(abs(self.amount_minor), 10**exponent)
        return f"{sign}{whole}.{frac:0{exponent}d}"

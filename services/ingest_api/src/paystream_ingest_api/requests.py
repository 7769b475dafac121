"""Request bodies of the ingest API, validated strictly (unknown fields are errors)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)

from paystream_core.countries import ISO_COUNTRIES
from paystream_core.money import CURRENCY_EXPONENTS, Money, MoneyError

AccountId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]

_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DepositRequest(_Strict):
    account_id: AccountId = Field(description="Your identifier of the end user's account.")
    country: str = Field(
        description="ISO 3166-1 alpha-2 country of the account.",
        examples=["DE"],
        json_schema_extra={"enum": list[JsonValue](sorted(ISO_COUNTRIES))},
    )
    amount: str = Field(
        description="Decimal string, > 0, no more fraction digits than the currency has.",
        examples=["100.00"],
        json_schema_extra={"pattern": r"^(0|[1-9][0-9]{0,18})(\.[0-9]{1,3})?$"},
    )
    currency: str = Field(
        description="ISO 4217 code.",
        examples=["EUR"],
        json_schema_extra={"enum": list[JsonValue](sorted(CURRENCY_EXPONENTS))},
    )
    payment_method: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=32)

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        if value not in ISO_COUNTRIES:
            raise ValueError("not an ISO 3166-1 alpha-2 country code")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if value not in CURRENCY_EXPONENTS:
            raise ValueError("unknown or unsupported ISO 4217 currency")
        return value

    @model_validator(mode="after")
    def _amount(self) -> DepositRequest:
        if self.money.amount_minor <= 0:
            raise ValueError("amount: must be greater than zero")
        return self

    @property
    def money(self) -> Money:
        try:
            return Money.parse(self.amount, self.currency)
        except MoneyError as exc:
            raise ValueError(f"amount: {exc}") from None


class BankDestination(_Strict):
    """Payout destination. Encrypted before it leaves the API; only a mask is shown."""

    holder_name: Annotated[str, StringConstraints(min_length=1, max_length=140)]
    iban: str | None = Field(
        default=None,
        examples=["DE89370400440532013000"],
        json_schema_extra={"pattern": _IBAN.pattern},
    )
    account_number: Annotated[str, StringConstraints(pattern=r"^[0-9]{4,20}$")] | None = None
    bank_code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,20}$")] | None = None
    bic: (
        Annotated[str, StringConstraints(pattern=r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$")] | None
    ) = None

    @field_validator("iban")
    @classmethod
    def _iban(cls, value: str | None) -> str | None:
        if value is not None and not (_IBAN.match(value) and _iban_checksum_ok(value)):
            raise ValueError("not a valid IBAN (uppercase, no spaces)")
        return value

    @model_validator(mode="after")
    def _one_account(self) -> BankDestination:
        if (self.iban is None) == (self.account_number is None):
            raise ValueError("give exactly one of iban or account_number")
        return self

    def masked(self) -> str:
        if self.iban:
            return f"{self.iban[:4]} **** {self.iban[-4:]}"
        assert self.account_number is not None
        return f"**** {self.account_number[-4:]}"


class WithdrawalRequest(DepositRequest):
    destination: BankDestination


def _iban_checksum_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def field_errors(errors: list[Any]) -> list[dict[str, str]]:
    """pydantic errors as [{field, message}] with dotted paths ("destination.iban")."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        message = str(err.get("msg", "invalid"))
        # Model-level checks name their field in the message ("amount: ...").
        if not loc and ": " in message.removeprefix("Value error, "):
            field, _, message = message.removeprefix("Value error, ").partition(": ")
            loc = [field]
        out.append(
            {"field": ".".join(loc) or "body", "message": message.removeprefix("Value error, ")}
        )
    return out

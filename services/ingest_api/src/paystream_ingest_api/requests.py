"""Request bodies of the ingest API, validated strictly (unknown fields are errors).

Every string refuses control characters and every amount has its currency's ceiling
(paystream_core.limits): what is answered 202 must fit the database and the ledger. The
JSON Schema of each model states the same rules, so the OpenAPI document admits exactly
what the server accepts (the IBAN check digits excepted: no pattern can say mod 97).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from paystream_core import limits
from paystream_core.countries import ISO_COUNTRIES
from paystream_core.money import CURRENCY_EXPONENTS, Money, MoneyError


def _no_controls(value: str) -> str:
    problem = limits.forbidden_character(value)
    if problem is not None:
        raise ValueError(f"must not contain {problem}")
    return value


# Free text: bounded, without control characters (the rule, and the schema saying it).
_NO_CONTROLS = AfterValidator(_no_controls)
_NO_CONTROLS_SCHEMA = Field(json_schema_extra={"pattern": limits.NO_CONTROL_PATTERN})
ID_PATTERN = rf"^[A-Za-z0-9_.:-]{{1,{limits.ACCOUNT_ID_MAX}}}$"

AccountId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
MetadataKey = Annotated[
    str, StringConstraints(pattern=rf"^[A-Za-z0-9_.:-]{{1,{limits.METADATA_KEY_MAX}}}$")
]
MetadataValue = Annotated[
    str,
    StringConstraints(max_length=limits.METADATA_VALUE_MAX),
    _NO_CONTROLS,
    _NO_CONTROLS_SCHEMA,
]
PaymentMethod = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.PAYMENT_METHOD_MAX),
    _NO_CONTROLS,
    _NO_CONTROLS_SCHEMA,
]
HolderName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.HOLDER_NAME_MAX),
    _NO_CONTROLS,
    _NO_CONTROLS_SCHEMA,
]

# Any amount of any currency; `_amount_rules` narrows it per currency.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,12})(\.[0-9]{1,3})?$"

_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")


# Printable ASCII, no space at either end (HTTP servers strip it, so the key would change).
IDEMPOTENCY_KEY_PATTERN = re.compile(
    rf"[\x21-\x7E]([\x20-\x7E]{{0,{limits.IDEMPOTENCY_KEY_MAX - 2}}}[\x21-\x7E])?"
)


def account_id_valid(value: str) -> bool:
    """Whether `value` can be an account id (path parameters are checked with it)."""
    return re.fullmatch(ID_PATTERN, value) is not None


def _deposit_schema(schema: dict[str, Any]) -> None:
    """What pydantic's schema leaves out. Metadata keys outside the key pattern are
    refused (pydantic states the pattern as patternProperties, which alone lets any other
    key through); the amount rule per currency (fraction digits, > 0, ceiling) is one
    branch per group of currencies sharing a pattern."""
    for branch in schema["properties"]["metadata"]["anyOf"]:
        if branch.get("type") == "object":
            branch["additionalProperties"] = False
    groups: dict[str, list[str]] = {}
    for currency in sorted(CURRENCY_EXPONENTS):
        groups.setdefault(limits.amount_pattern(currency), []).append(currency)
    schema["anyOf"] = [
        {
            "properties": {
                "currency": {"enum": currencies},
                "amount": {"pattern": pattern},
            }
        }
        for pattern, currencies in groups.items()
    ]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DepositRequest(_Strict):
    model_config = ConfigDict(json_schema_extra=_deposit_schema)

    account_id: AccountId = Field(description="Your identifier of the end user's account.")
    country: str = Field(
        description="ISO 3166-1 alpha-2 country of the account.",
        examples=["DE"],
        json_schema_extra={"enum": list[JsonValue](sorted(ISO_COUNTRIES))},
    )
    amount: str = Field(
        description=(
            "Decimal string, > 0, no more fraction digits than the currency has, at most"
            f" {limits.MAX_AMOUNT_MINOR:,} minor units (e.g. 10000000000.00 EUR,"
            " 1000000000000 JPY, 1000000000.000 KWD)."
        ),
        examples=["100.00"],
        json_schema_extra={"pattern": AMOUNT_PATTERN},
    )
    currency: str = Field(
        description="ISO 4217 code.",
        examples=["EUR"],
        json_schema_extra={"enum": list[JsonValue](sorted(CURRENCY_EXPONENTS))},
    )
    payment_method: PaymentMethod | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        default=None, max_length=limits.METADATA_MAX_ENTRIES
    )

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
        try:
            limits.check_amount(self.money.amount_minor, self.currency)
        except limits.LimitError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def money(self) -> Money:
        try:
            return Money.parse(self.amount, self.currency)
        except MoneyError as exc:
            raise ValueError(f"amount: {exc}") from None


def _one_account_schema(schema: dict[str, Any]) -> None:
    """ "Exactly one of iban or account_number" (null counts as absent) as JSON Schema."""
    schema["anyOf"] = [
        {
            "required": [given],
            "properties": {given: {"type": "string"}, other: {"type": "null"}},
        }
        for given, other in (("iban", "account_number"), ("account_number", "iban"))
    ]


class BankDestination(_Strict):
    """Payout to a bank account. Encrypted before it leaves the API; only a mask is shown."""

    model_config = ConfigDict(json_schema_extra=_one_account_schema)

    # Optional: bank details are the default kind. Not sealed (the sealed bank details stay
    # what they always were; a destination without `type` is a bank account).
    type: Literal["bank"] = Field(
        default="bank", exclude=True, description="Destination kind; `bank` when omitted."
    )
    holder_name: HolderName
    iban: str | None = Field(
        default=None,
        description="ISO 13616 IBAN, uppercase without spaces, with valid check digits.",
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


# Stripe account ids: `acct_` and letters/digits (16 today; Stripe ids are at most 255
# characters). At least 8 after the prefix, so the mask's last four never show it whole.
STRIPE_ACCOUNT_PATTERN = r"^acct_[A-Za-z0-9]{8,250}$"


class StripeAccountDestination(_Strict):
    """Payout to a Stripe connected account (a Transfer from the platform's balance).
    Sealed like bank details; only the mask (`acct_…1234`) is stored readable."""

    type: Literal["stripe_account"]
    account: str = Field(
        description="The connected account's id.",
        examples=["acct_1Nv0FGQ9RKHgCVdK"],
        json_schema_extra={"pattern": STRIPE_ACCOUNT_PATTERN},
    )

    @field_validator("account")
    @classmethod
    def _account(cls, value: str) -> str:
        if re.fullmatch(STRIPE_ACCOUNT_PATTERN, value) is None:
            raise ValueError("not a Stripe connected account id (acct_ and 8-250 letters/digits)")
        return value

    def masked(self) -> str:
        return f"acct_…{self.account[-4:]}"


DESTINATION_TYPES = ("bank", "stripe_account")


def _destination_type(value: Any) -> str | None:
    """The union's tag: `type`, bank when absent (bodies from before the union)."""
    if isinstance(value, BaseModel):
        return str(getattr(value, "type", "bank"))
    if isinstance(value, dict):
        kind = value.get("type", "bank")
        return kind if kind in DESTINATION_TYPES else None
    return None


Destination = Annotated[
    Annotated[BankDestination, Tag("bank")]
    | Annotated[StripeAccountDestination, Tag("stripe_account")],
    Discriminator(
        _destination_type,
        custom_error_type="destination_type",
        custom_error_message="an object whose type is bank (the default) or stripe_account",
    ),
]


class WithdrawalRequest(DepositRequest):
    destination: Destination = Field(
        description=(
            "Where the money goes: bank details (`type` bank, the default) or a Stripe"
            " connected account (`type` stripe_account). Encrypted before it leaves the API;"
            " only a mask is ever shown."
        )
    )


def _iban_checksum_ok(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def field_errors(errors: list[Any]) -> list[dict[str, str]]:
    """pydantic errors as [{field, message}] with dotted paths ("destination.iban")."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        # The destination union's tag is not a field the client wrote.
        if loc[:1] == ["destination"] and loc[1:2] and loc[1] in DESTINATION_TYPES:
            del loc[1]
        message = str(err.get("msg", "invalid"))
        # Model-level checks name their field in the message ("amount: ...").
        if not loc and ": " in message.removeprefix("Value error, "):
            field, _, message = message.removeprefix("Value error, ").partition(": ")
            loc = [field]
        out.append(
            {"field": ".".join(loc) or "body", "message": message.removeprefix("Value error, ")}
        )
    return out

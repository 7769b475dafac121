"""What kind of payout destination a withdrawal names, as the adapters see it.

The worker opens the sealed destination and hands its JSON to the adapter as
`PaymentRequest.destination`: bank details (`holder_name` with `iban` or `account_number`;
no `type`, or `type` "bank") or a Stripe connected account (`type` "stripe_account",
`account` "acct_..."). Each adapter pays out to the kind its provider can reach and
declines the other with `destination_unsupported` (retry elsewhere: nothing was sent).
"""

from __future__ import annotations

from collections.abc import Mapping

from paystream_core.outcomes import Declined

STRIPE_ACCOUNT = "stripe_account"
BANK = "bank"
UNSUPPORTED = "destination_unsupported"


def destination_type(destination: Mapping[str, str] | None) -> str | None:
    """`stripe_account`, `bank`, or None when the request names no destination."""
    if not destination:
        return None
    return destination.get("type") or BANK


def stripe_account(destination: Mapping[str, str] | None) -> str | None:
    """The connected account a `stripe_account` destination names, else None."""
    if destination_type(destination) != STRIPE_ACCOUNT:
        return None
    assert destination is not None
    return destination.get("account") or None


def unsupported(provider: str, kind: str | None, accepted: str) -> Declined:
    """A decline before any call: the provider cannot pay out to this kind of destination,
    another gateway may (retry elsewhere)."""
    named = {STRIPE_ACCOUNT: "a Stripe connected account", BANK: "bank details"}
    given = named.get(kind, f"a {kind!r} destination") if kind else "no destination"
    return Declined(
        UNSUPPORTED,
        f"{provider} pays out only to {named[accepted]}, and this withdrawal names {given}",
        True,
        None,
    )

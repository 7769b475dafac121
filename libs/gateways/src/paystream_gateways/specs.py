"""What a provider declares about itself: how to build its gateway, which credential
fields it takes, which of them are secret.

Adapters import these to describe themselves; the registry (`registry.py`) imports the
adapters to know the built-in providers. Keeping the declarations here keeps that one way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import InvalidCredentials
from paystream_gateways.protocol import ClientOptions, Gateway

GatewayFactory = Callable[[Credentials, ClientOptions], Gateway]


@dataclass(frozen=True, slots=True)
class CredentialField:
    name: str
    secret: bool
    required: bool = True
    default: str | None = None
    help: str = ""


# Every provider's callbacks verify with the current secret and, during a rotation, the
# previous one; `rotate-secret` fills it in when the webhook secret changes.
PREVIOUS_WEBHOOK_SECRET = CredentialField(
    "webhook_secret_previous",
    secret=True,
    required=False,
    help="still accepted for callbacks while the provider switches to the new secret",
)


def webhook_secrets(credentials: Mapping[str, str]) -> list[str]:
    current = [credentials["webhook_secret"]]
    previous = credentials.get("webhook_secret_previous")
    return [*current, previous] if previous else current


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    factory: GatewayFactory
    fields: tuple[CredentialField, ...]

    @property
    def secret_fields(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields if f.secret)

    def validate(self, values: Mapping[str, str], *, partial: bool = False) -> Credentials:
        """Check names (never echoing values); fill defaults. `partial`: a subset to merge."""
        known = {f.name for f in self.fields}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidCredentials(
                f"{self.name}: unknown credential field(s) {', '.join(unknown)}"
                f" (expected: {', '.join(sorted(known))})"
            )
        empty = sorted(k for k, v in values.items() if not v)
        if empty:
            raise InvalidCredentials(f"{self.name}: empty credential field(s) {', '.join(empty)}")
        if partial:
            return Credentials(values)
        complete = dict(values)
        for f in self.fields:
            if f.name not in complete and f.default is not None:
                complete[f.name] = f.default
        missing = sorted(f.name for f in self.fields if f.required and f.name not in complete)
        if missing:
            raise InvalidCredentials(
                f"{self.name}: missing credential field(s) {', '.join(missing)}"
            )
        return Credentials(complete)

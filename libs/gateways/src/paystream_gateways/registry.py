"""Provider name -> how to build its gateway and which credential fields it takes.

A new provider plugs in by registering a `ProviderSpec`; the manager, the connection
repository and the CLI read everything else (field names, which are secret) from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import InvalidCredentials, UnsupportedProvider
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


class Registry:
    def __init__(self, specs: list[ProviderSpec] | None = None) -> None:
        self._specs: dict[str, ProviderSpec] = {}
        for spec in specs or []:
            self.register(spec)

    def register(self, spec: ProviderSpec, *, replace: bool = False) -> None:
        if spec.name in self._specs and not replace:
            raise ValueError(f"provider {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, provider: str) -> ProviderSpec:
        spec = self._specs.get(provider)
        if spec is None:
            raise UnsupportedProvider(provider, self.providers())
        return spec

    def providers(self) -> list[str]:
        return sorted(self._specs)


def default_registry() -> Registry:
    """The built-in providers: `stripe`, `json` (JSONPay REST), `soap` (SOAPBank XML)."""
    # Imported here so that importing the registry does not pull in every SDK.
    from paystream_gateways.json_gateway import SPEC as JSON_SPEC
    from paystream_gateways.soap_gateway import SPEC as SOAP_SPEC
    from paystream_gateways.stripe_gateway import SPEC as STRIPE_SPEC

    return Registry([STRIPE_SPEC, JSON_SPEC, SOAP_SPEC])

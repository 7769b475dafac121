"""Provider name -> its `ProviderSpec`, and the built-in providers.

A new provider plugs in by registering a `ProviderSpec` (specs.py); the manager, the
connection repository and the CLI read everything else (field names, which are secret)
from it.
"""

from __future__ import annotations

from paystream_gateways.errors import UnsupportedProvider
from paystream_gateways.specs import ProviderSpec


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

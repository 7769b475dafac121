"""Gateway protocol, adapters (stripe, JSON, XML/SOAP), credentials, connections, manager.

The key ring that seals credentials is `paystream_keyring`.

Adapters live in their own modules (`stripe_gateway`, `json_gateway`, `soap_gateway`) and
are reached through the registry, so importing this package does not load any SDK.
"""

from paystream_gateways.credentials import Credentials
from paystream_gateways.errors import (
    Ambiguous,
    AmbiguousReason,
    CallbackRejected,
    ConnectionDisabled,
    ConnectionExists,
    ConnectionNotFound,
    CredentialsUndecryptable,
    GatewayError,
    GatewayNotFound,
    GatewaySetupError,
    InvalidCredentials,
    NotExecuted,
    NotExecutedReason,
    UnsupportedProvider,
)
from paystream_gateways.protocol import (
    ActionRequired,
    CallbackEvent,
    ClientOptions,
    Declined,
    Gateway,
    NotFound,
    Outcome,
    PaymentRequest,
    Pending,
    StatusQuery,
    StatusResult,
    Succeeded,
)
from paystream_gateways.registry import Registry, default_registry
from paystream_gateways.specs import CredentialField, GatewayFactory, ProviderSpec

__all__ = [
    "ActionRequired",
    "Ambiguous",
    "AmbiguousReason",
    "CallbackEvent",
    "CallbackRejected",
    "ClientOptions",
    "ConnectionDisabled",
    "ConnectionExists",
    "ConnectionNotFound",
    "CredentialField",
    "Credentials",
    "CredentialsUndecryptable",
    "Declined",
    "Gateway",
    "GatewayError",
    "GatewayFactory",
    "GatewayNotFound",
    "GatewaySetupError",
    "InvalidCredentials",
    "NotExecuted",
    "NotExecutedReason",
    "NotFound",
    "Outcome",
    "PaymentRequest",
    "Pending",
    "ProviderSpec",
    "Registry",
    "StatusQuery",
    "StatusResult",
    "Succeeded",
    "UnsupportedProvider",
    "default_registry",
]

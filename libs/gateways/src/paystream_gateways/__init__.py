"""Gateway protocol, adapters (stripe, JSON, XML/SOAP), credentials, routing, resilience."""

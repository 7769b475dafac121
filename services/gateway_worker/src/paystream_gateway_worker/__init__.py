"""Gateway worker: routes commands to payment gateways, safely."""

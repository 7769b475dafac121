"""Callback ingress: `POST /v1/callbacks/{gateway}/{connection_id}`, verified, then on Kafka."""

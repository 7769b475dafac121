"""What paystream's HTTP services share: problem+json errors, bounded bodies, metrics."""

"""What paystream's HTTP services share: problem+json errors, bounded bodies, metrics,
operations routes (`service`), the shutdown lifespan (`lifespan`) and the server (`serving`).
"""

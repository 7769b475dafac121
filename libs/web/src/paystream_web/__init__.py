"""What paystream's HTTP services share: problem+json errors, bounded bodies, operations
routes (`service`), the edge layer with request metrics and the hot routes (`edge`), the
shutdown lifespan (`lifespan`) and the server (`serving`).
"""

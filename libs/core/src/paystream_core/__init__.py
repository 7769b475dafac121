"""Pure domain: money, identifiers, statuses. No I/O and no third-party imports."""

"""The payment core: money, identifiers, statuses and the rules that move them.

Pure: no I/O and no third-party imports (an import-linter contract guards it). Workers, the
reconciler and the ingest API call these rules; nothing else decides them:

- `statuses` — transaction and attempt statuses, the forward-only state machine
- `ledger` — double-entry legs, and the money event a status change implies
- `routing` — which gateways may take a payment, in priority order
- `attempts` — the next attempt, and what a provider's answer does (ambiguity-aware fallback)
- `reports` — callbacks and status lookups: forward-only, stale vs anomaly, the reconciler
- `transitions` — one status change as a value (new row, money event, outcome)
- `ports` — the storage interface the services use
"""

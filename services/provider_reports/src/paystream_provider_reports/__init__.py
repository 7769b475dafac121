"""Provider results applied to transactions: the callback worker (faust agent over the
callbacks topic, parked orphans retried) and the reconciler (status lookups, expiry)."""

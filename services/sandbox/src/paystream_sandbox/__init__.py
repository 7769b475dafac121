"""Provider sandbox: Stripe-, JSON- and SOAP-compatible fake providers with fault controls."""

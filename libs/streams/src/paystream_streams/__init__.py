"""What paystream's faust workers share: transport, app setup, records, dead letters, health."""

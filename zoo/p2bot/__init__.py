"""P2Bot zoo entries (``zoo:p2bot/...``)."""

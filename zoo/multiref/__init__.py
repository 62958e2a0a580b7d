"""Multi-referenced training zoo entries (``zoo:multiref/...``)."""

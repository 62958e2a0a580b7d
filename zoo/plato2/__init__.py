"""PLATO-2 zoo entries (``zoo:plato2/...``)."""

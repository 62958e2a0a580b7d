"""CORAL zoo entries (``zoo:coral/...``)."""

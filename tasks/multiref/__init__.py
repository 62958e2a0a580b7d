"""``-t multiref_ext``: multi-referenced training data (ground truth and/or pseudo references)."""

"""PPG zoo entries (``zoo:ppg/...``)."""

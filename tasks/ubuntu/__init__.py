"""Ubuntu teachers read from disk: DSTC7 track 1 JSON and UDC v2 CSV (``-t ubuntu_ext``)."""

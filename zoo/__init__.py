"""Model zoo of parlai-ext (installed as ``parlai_ext.zoo``)."""

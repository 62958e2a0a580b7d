"""Training objectives as small functions, kept apart from the architectures (like fairseq's
criterions): ``parlai_ext.losses.<system>``."""

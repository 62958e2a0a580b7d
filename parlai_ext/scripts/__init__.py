"""ParlAI scripts of parlai-ext; each module registers itself with ``@register_script``."""

"""Teachers of parlai-ext (installed as ``parlai_ext.tasks``)."""

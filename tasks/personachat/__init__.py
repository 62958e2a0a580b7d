"""PersonaChat / ConvAI2 teachers read from disk (``-t personachat_ext``)."""

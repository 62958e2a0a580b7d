"""PPG's teachers over PersonaChat / ConvAI2 ``both`` files (``-t ppg_ext``)."""

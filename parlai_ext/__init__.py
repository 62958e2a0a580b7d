"""parlai-ext: published open-domain dialogue systems as ParlAI 1.7.2 agents and teachers.

Importing this package is cheap (no torch, no ParlAI); see ``parlai_ext.registry`` for the
short names and ``parlai_ext.compat`` for the fixes that make ParlAI run on current Python,
torch and numpy.
"""

__version__ = '0.1.0'

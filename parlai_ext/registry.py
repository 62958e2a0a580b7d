"""ParlAI short names of parlai-ext's agents and teachers (pure data, imported at lookup time).

``-m <name>`` resolves through ``parlai.agents.<name>.agents`` and ``-t <name>`` through
``parlai.tasks.<name>.agents`` (teachers) and ``.worlds`` (self-chat / interactive worlds),
``zoo:<name>/...`` through ``parlai.zoo.<name>.build`` (offline model zoo);
the start-up hook (``_parlai_ext_hook``) maps those module paths onto the modules named here.
Names must never shadow a ParlAI built-in (a test checks this against the installed ParlAI).
"""

# agent short name -> module defining the class ParlAI expects (``foo_bar`` -> FooBarAgent)
AGENTS: dict[str, str] = {
    'unified_transformer': 'parlai_ext.agents.unified_transformer',
    'encoder_decoder': 'parlai_ext.agents.encoder_decoder',
    'coral': 'parlai_ext.agents.coral',
    'coral_esim': 'parlai_ext.agents.coral_reward',
    'coral_cross_encoder': 'parlai_ext.agents.coral_reward',
    'plato2': 'parlai_ext.agents.plato2',
    'plato2_evaluator': 'parlai_ext.agents.plato2_evaluator',
    'mr_hred': 'parlai_ext.agents.vhred',
    'vhred': 'parlai_ext.agents.vhred',
    'vhred_gmm': 'parlai_ext.agents.vhred',
    'vhred_lgm': 'parlai_ext.agents.vhred',
    'ppg_persona_generator': 'parlai_ext.agents.ppg',
    'ppg_response_generator': 'parlai_ext.agents.ppg',
    'ppg_critic': 'parlai_ext.agents.ppg',
    'ppg_rl': 'parlai_ext.agents.ppg_rl',
    'p2bot_transmitter': 'parlai_ext.agents.p2bot',
    'p2bot_receiver': 'parlai_ext.agents.p2bot_receiver',
    'hf_generator': 'parlai_ext.agents.hf',
}

# task short name -> {'agents': teachers module, 'worlds': worlds module (optional)}
TASKS: dict[str, dict[str, str]] = {
    'ext_demo': {'agents': 'parlai_ext.tasks.demo.agents'},
    'personachat_ext': {'agents': 'parlai_ext.tasks.personachat.agents'},
    'dailydialog_ext': {'agents': 'parlai_ext.tasks.dailydialog.agents'},
    'ubuntu_ext': {'agents': 'parlai_ext.tasks.ubuntu.agents'},
    'multiref_ext': {'agents': 'parlai_ext.tasks.multiref.agents'},
    'ppg_ext': {'agents': 'parlai_ext.tasks.ppg.agents'},
    'p2bot_selfplay': {
        'agents': 'parlai_ext.tasks.p2bot_selfplay.agents',
        'worlds': 'parlai_ext.tasks.p2bot_selfplay.worlds',
    },
}

# zoo system name -> package whose modules ParlAI's ``zoo:<system>/...`` lookup imports
# (``parlai.zoo.<system>.build`` -> ``<package>.build``; see zoo/common.py)
ZOO: dict[str, str] = {
    'plato2': 'parlai_ext.zoo.plato2',
    'p2bot': 'parlai_ext.zoo.p2bot',
    'ppg': 'parlai_ext.zoo.ppg',
    'coral': 'parlai_ext.zoo.coral',
    'multiref': 'parlai_ext.zoo.multiref',
}

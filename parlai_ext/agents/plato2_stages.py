"""What the two PLATO-2 stage-2 agents share: the hand-over from a stage-1 model file.

Both stage-2 models of the curriculum (paper §2.2) continue the stage-1 unified transformer
(Eq. 1, :mod:`parlai_ext.agents.unified_transformer`) through ``--init-model``: the
fine-grained generator (:mod:`parlai_ext.agents.plato2`, Eq. 2-6) and the evaluation model
(:mod:`parlai_ext.agents.plato2_evaluator`, Eq. 7-9). This module holds that hand-over:

- :func:`inherit_architecture`: the sizes, truncation limits and dictionary options (over a
  pretrained LM also ``--hf-model-dir`` and its LoRA settings) of the stage-1 ``.opt``;
- :func:`load_with_fresh`, :func:`load_hf_with_fresh`: a stage-1 checkpoint loads into a
  stage-2 model whose only missing parameters are the stage's new ones (the latent embedding,
  ``[M]`` slot and recognition layer of Eq. 3 and the BOW head of Eq. 5; the coherence and
  masked-LM heads of Eq. 7-8);
- :func:`save_model_dictionary`: a stage-2 model file is saved next to the stage-1 dictionary,
  whose token ids the model has;
- ``--mask-slot`` (:func:`add_mask_slot_arg`, :func:`mask_id_of`): the input vector of the
  ``[M]`` slot whose final hidden state h[M] gives the posterior p(z|c, r) (Eq. 3), and of the
  evaluator's ``[MASK]`` (Eq. 8).
"""

from __future__ import annotations

import copy
import os

from parlai.core.opt import Opt
from parlai.utils import logging
from torch import nn

from parlai_ext.agents import hf as hf_glue
from parlai_ext.modules import hf

# sizes a stage-2 model takes from the stage-1 model file it starts from
ARCHITECTURE_KEYS = (
    'n_layers', 'embedding_size', 'n_heads', 'ffn_size', 'n_positions', 'activation',
    'lm_head', 'knover_layout', 'mask_slot', 'hf_context_attention',
)  # fmt: skip
# ... and its truncation limits: the stage-2 models see the inputs stage 1 was trained on
TRUNCATION_KEYS = ('text_truncate', 'label_truncate')
DICTIONARY_PREFIXES = ('dict_', 'spm_')
MASK_TOKEN = '[MASK]'  # the token whose embedding is the [M] / [MASK] input (--mask-slot token)


def inherit_architecture(opt: Opt, pretrained: bool = False) -> Opt:
    """Take the sizes, truncation limits and dictionary options of ``--init-model``'s ``.opt``
    unless given (``--truncate`` given on the command line counts for both limits).

    ``pretrained``: also the pretrained LM and its LoRA settings
    (:data:`~parlai_ext.agents.hf.HF_ARCH_KEYS`: ``--hf-model-dir``, ``--lora-*``), for a
    stage-2.1 generator that continues a stage-1 model over an HF LM.

    The token ids of the stage-1 model are those of its dictionary, so its dictionary class
    and options (``--dict-*``, ``--spm-*``; e.g. the SentencePiece dictionary) come along;
    ParlAI already takes its ``.dict`` file. Only on a fresh start (no model file yet): a
    saved model already has its own.
    """
    init_model = opt.get('init_model')
    model_file = opt.get('model_file')
    if not init_model or (model_file and os.path.isfile(model_file)):
        return opt
    if not os.path.isfile(init_model + '.opt'):
        return opt
    saved = Opt.load(init_model + '.opt')
    given = opt.get('override', {})
    opt = copy.deepcopy(opt)
    for key, value in saved.items():
        inherited = key in ARCHITECTURE_KEYS or key.startswith(DICTIONARY_PREFIXES)
        inherited = inherited or (pretrained and key in hf_glue.HF_ARCH_KEYS)
        if key in TRUNCATION_KEYS:
            inherited = 'truncate' not in given and value is not None
        if inherited and key not in given and key != 'dict_file':
            opt[key] = value
    return opt


def load_with_fresh(model: nn.Module, state_dict: dict, fresh: tuple[str, ...]) -> list[str]:
    """Load ``state_dict``; only the ``fresh`` parameters may be missing, and all together.

    A checkpoint of this very model loads exactly; a stage-1 checkpoint (the backbone only)
    leaves the ``fresh`` parameters at their initial values. Anything else is an error.

    :return: the names that kept their initial values.
    """
    # ParlAI's generator models keep their start token as a buffer; a ranker has none
    state_dict = {k: v for k, v in state_dict.items() if k in model.state_dict() or k != 'START'}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    expected_fresh = [name for name in model.state_dict() if name.startswith(fresh)]
    if unexpected or (missing and sorted(missing) != sorted(expected_fresh)):
        raise RuntimeError(
            'checkpoint does not match the model: '
            f'missing {sorted(missing)}, unexpected {sorted(unexpected)}; a PLATO-2 stage-2 '
            'model starts from a stage-1 (unified_transformer) model file of the same sizes'
        )
    if missing:
        logging.info(f'stage-1 checkpoint: {len(missing)} stage-2 parameter tensors start fresh')
    return list(missing)


def load_hf_with_fresh(model: nn.Module, state_dict: dict, fresh: tuple[str, ...]) -> list[str]:
    """:func:`load_with_fresh` for a model over a pretrained HF backbone, with or without LoRA.

    The checkpoint may hold every weight (full fine-tuning, or ``--lora-merge``: then the
    adapters of ``model`` are removed, the weights loaded and fresh adapters put back) or only
    the trainable ones (adapters, added-token rows, heads: the frozen base is the one
    ``model`` was built with). As in :func:`load_with_fresh`, the ``fresh`` parameters may be
    missing, all together.
    """
    state_dict = {k: v for k, v in state_dict.items() if k in model.state_dict() or k != 'START'}
    frozen = hf.frozen_base_keys(model)
    readapt = []
    if frozen and not hf.is_adapter_checkpoint(state_dict):  # full weights over adapters
        for module in list(model.modules()):
            settings = getattr(module, '_parlai_ext_lora', None)
            if settings is not None:
                tokens = getattr(module, '_parlai_ext_lora_tokens', ())
                hf.merge_lora(module, merge=False)
                readapt.append((module, settings, tokens))
        frozen = set()
    elif not frozen and hf.is_adapter_checkpoint(state_dict):
        raise RuntimeError(
            'the checkpoint holds LoRA adapters but this model has none: keep the --lora-rank '
            '(and --lora-target-modules) of the model file, or save it with --lora-merge true'
        )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    for module, settings, tokens in readapt:
        hf.apply_lora(module, settings, tokens)
    missing = [name for name in missing if name not in frozen]
    expected_fresh = [name for name in model.state_dict() if name.startswith(fresh)]
    if unexpected or (missing and sorted(missing) != sorted(expected_fresh)):
        raise RuntimeError(
            'checkpoint does not match the model: '
            f'missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}; a PLATO-2 '
            'stage-2 model starts from a stage-1 model file over the same --hf-model-dir'
        )
    if missing:
        logging.info(f'stage-1 checkpoint: {len(missing)} stage-2 parameter tensors start fresh')
    return list(missing)


def save_model_dictionary(agent, path: str | None) -> None:
    """Write the dictionary the model uses to ``PATH.dict``, replacing any other file there.

    ``parlai train_model --init-model STAGE1`` without ``--dict-file`` builds a dictionary
    from the data at ``MODEL.dict`` before the agent exists, while the agent (rightly) loads
    ``STAGE1.dict``, whose ids the model has; ParlAI's ``save`` keeps an existing ``.dict``,
    so the model file would be saved next to the wrong dictionary.
    """
    if path and hasattr(agent, 'dict') and agent.opt.get('dict_file') != path + '.dict':
        agent.dict.save(path + '.dict', sort=False)


def mask_id_of(opt: Opt, dictionary) -> int | None:
    """The [MASK] token id under ``--mask-slot token`` (None: a learned slot)."""
    if (opt.get('mask_slot') or 'learned') == 'learned':
        return None
    if MASK_TOKEN not in dictionary.tok2ind:
        raise ValueError(
            f'--mask-slot token needs a {MASK_TOKEN} token in the dictionary (e.g. '
            'SentencePieceDictionaryAgent with --spm-knover-ids true)'
        )
    return dictionary.tok2ind[MASK_TOKEN]


def add_mask_slot_arg(group) -> None:
    group.add_argument(
        '--mask-slot',
        choices=['learned', 'token'],
        default='learned',
        help='the [M] / [MASK] input vector: learned = its own parameter; token = the '
        f'embedding of the {MASK_TOKEN} token (Knover ties it to the word embeddings)',
    )

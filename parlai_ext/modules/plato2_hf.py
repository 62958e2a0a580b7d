"""PLATO-2 over pretrained Hugging Face models (issue #20): the unified transformer as a prefix
LM over a decoder-only LM, the stage-2.1 generator and the stage-2.2 evaluator over an encoder.

- :class:`HfUnifiedTransformer` has the interface of
  :class:`~parlai_ext.modules.unified_transformer.UnifiedTransformer` (``encode``, ``forward``,
  ``encode_context``, ``decode``, ``logits``) over any ``AutoModelForCausalLM`` (GPT-2, Llama,
  SmolLM2, ...), through the shared :class:`~parlai_ext.modules.hf.HfPrefixLM`: attention is
  bidirectional over ``[prefix; context]`` and causal over the response (Fig. 2's prefix-LM
  mask, :func:`~parlai_ext.modules.hf.prefix_lm_mask`), or bidirectional everywhere
  (``bidirectional=True``: the recognition pass of Eq. 3). Prefix slots (PLATO-2's latent z
  and ``[M]``) are input embeddings put in place of placeholder tokens
  (:func:`~parlai_ext.modules.hf.inject_embeddings`); position ids skip padding, so the z slot
  has position 0, the context the next ones and the response follows its last valid token.
  The output layer is the LM's own head. Decoding continues the prefix with the LM's
  key/value cache (or recomputes, for models without one): ``encode_context`` returns a
  :class:`~parlai_ext.modules.hf.PrefixState`, ``decode`` a
  :class:`~parlai_ext.modules.hf.DecodeState` (both reorderable with ``index_select``).
  The LM has no type embeddings; ParlAI's start token separates context and response.
- :class:`HfPlato2Generator`: :class:`~parlai_ext.modules.plato2.LatentHeadsMixin` (Eq. 2-6:
  latent table and ``[M]`` slot of the LM's hidden size, posterior from the ``[M]`` output of
  the bidirectional recognition pass, BOW from the z output through the LM head) over it.
- :class:`HfPlato2Evaluator`: Eq. 7-9 over an ``AutoModel`` encoder (BERT, MiniLM):
  ``[CLS] context [SEP] response`` packed without inner padding (token types 0 / 1), the
  coherence classifier on the ``[CLS]`` output, a masked-LM head (BERT's transform, decoder
  tied to the word embeddings; the checkpoint's own MLM head when it has one) whose targets
  are the original tokens.

Every pass runs under bf16 autocast when ``bf16`` is set; hidden states and logits come back
in fp32, so heads, losses and metrics stay fp32.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parlai_ext.modules import hf
from parlai_ext.modules.plato2 import LatentHeadsMixin


class HfUnifiedTransformer(nn.Module):
    """A decoder-only HF LM as PLATO-2's unified transformer (see the module docstring).

    :param lm: an ``AutoModelForCausalLM`` (embeddings already sized to the dictionary).
    :param padding_idx: the ParlAI dictionary's padding id (invalid positions).
    :param bf16: run every pass under bf16 autocast (outputs stay fp32).
    :param use_cache: decode with the LM's key/value cache (False: recompute each step).
    :param causal_context: attend causally over ``[prefix; context]`` too, as the LM was
        pretrained (the prefix slots come first, so every position still sees z); False:
        bidirectionally, the paper's prefix-LM mask. The recognition pass is bidirectional
        either way.
    """

    def __init__(
        self,
        lm: nn.Module,
        padding_idx: int,
        bf16: bool = False,
        use_cache: bool = True,
        causal_context: bool = False,
    ) -> None:
        super().__init__()
        self.lm = hf.HfPrefixLM(lm, use_cache=use_cache)
        self.padding_idx = padding_idx
        self.bf16 = bf16
        self.causal_context = causal_context

    def _prefix_length(self, valid: torch.Tensor) -> torch.Tensor:
        """How many leading columns attend bidirectionally: the valid prefix, or 0 (causal)."""
        length = valid.sum(dim=1)
        return torch.zeros_like(length) if self.causal_context else length

    @property
    def dim(self) -> int:
        return self.lm.dim

    def _autocast(self, like: torch.Tensor):
        return hf.autocast(self.bf16, like.device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM's own output head, fp32 logits."""
        with self._autocast(hidden):
            return self.lm.logits(hidden).float()

    def embed_prefix(
        self, context: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings and validity of ``[prefix; context]``: ``(B, P + Lc, D)``, ``(B, P + Lc)``.

        The ``P`` prefix vectors replace the embeddings of placeholder (padding) tokens.
        """
        valid = context != self.padding_idx
        if prefix is None:
            return self.lm.embed(context), valid
        batch, n_prefix, _ = prefix.shape
        holders = context.new_full((batch, n_prefix), self.padding_idx)
        embeds = self.lm.embed(torch.cat([holders, context], dim=1))
        slots = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        slots[:, :n_prefix] = True
        embeds = hf.inject_embeddings(embeds, slots, prefix.reshape(batch * n_prefix, -1))
        ones = torch.ones(batch, n_prefix, dtype=torch.bool, device=valid.device)
        return embeds, torch.cat([ones, valid], dim=1)

    def encode(
        self,
        context: torch.Tensor,
        response: torch.Tensor,
        prefix: torch.Tensor | None = None,
        bidirectional: bool = False,
    ) -> tuple[torch.Tensor, hf.PrefixState]:
        """One pass over ``[prefix; context; response]``: fp32 hidden states of every column.

        Prefix-LM mask (default): ``[prefix; context]`` attend to each other, the response to
        all of them and causally to itself. ``bidirectional``: every valid column sees every
        valid column (Eq. 3's recognition pass).

        :return: hidden ``(B, P + Lc + Lr, D)`` and the (not decodable) state of the prefix
            part, whose ``valid`` has ``P + Lc`` columns.
        """
        prefix_embeds, prefix_valid = self.embed_prefix(context, prefix)
        response_valid = response != self.padding_idx
        if bidirectional:
            length: torch.Tensor | int = prefix_valid.shape[1] + response.shape[1]
        else:
            length = self._prefix_length(prefix_valid)  # right-padded: valid columns first
        with self._autocast(context):
            prefix_hidden, response_hidden = self.lm(
                prefix_embeds,
                prefix_valid,
                self.lm.embed(response),
                response_valid,
                prefix_length=length,
            )
        hidden = torch.cat([prefix_hidden, response_hidden], dim=1).float()
        lengths = torch.as_tensor(length, device=context.device).expand(context.shape[0])
        return hidden, hf.PrefixState(prefix_embeds, prefix_valid, lengths, None)

    def forward(
        self, context: torch.Tensor, response: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, hf.PrefixState]:
        """Teacher forcing: response hidden states ``(B, Lr, D)`` and the prefix state."""
        hidden, state = self.encode(context, response, prefix)
        return hidden[:, state.valid.shape[1] :], state

    def encode_context(
        self, context: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> hf.PrefixState:
        """Bidirectional pass over ``[prefix; context]``; keeps the LM's key/value cache."""
        embeds, valid = self.embed_prefix(context, prefix)
        with self._autocast(context):
            _, state = self.lm.encode(embeds, valid, self._prefix_length(valid))
        return state

    def decode(
        self,
        tokens: torch.Tensor,
        context: hf.PrefixState,
        incr: hf.DecodeState | None = None,
    ) -> tuple[torch.Tensor, hf.DecodeState]:
        """Response ``tokens`` after the context (and the tokens in ``incr``): fp32 hidden."""
        with self._autocast(tokens):
            hidden, state = self.lm.decode(self.lm.embed(tokens), context, incr)
        return hidden.float(), state


class HfPlato2Generator(LatentHeadsMixin, HfUnifiedTransformer):
    """PLATO-2 stage 2.1 (Eq. 2-6) over a pretrained decoder-only LM.

    The latent table (``K x hidden``) and the ``[M]`` slot are new parameters of the LM's hidden
    size; the recognition and BOW heads are those of
    :class:`~parlai_ext.modules.plato2.Plato2Generator`; the BOW's output layer is the LM head.
    """

    def __init__(
        self,
        lm: nn.Module,
        vocab_size: int,
        padding_idx: int,
        n_latent: int = 20,
        tau: float = 0.67,
        bf16: bool = False,
        use_cache: bool = True,
        causal_context: bool = False,
    ) -> None:
        super().__init__(
            lm, padding_idx, bf16=bf16, use_cache=use_cache, causal_context=causal_context
        )
        self._init_latent_heads(vocab_size, self.dim, n_latent, tau)


# ================================================================================ evaluator


def pack_pair(
    context: torch.Tensor,
    response: torch.Tensor,
    padding_idx: int,
    cls_idx: int,
    sep_idx: int,
    replaced: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``[CLS] context [SEP] response`` per row with the valid tokens first (no inner padding).

    :param context: ``(B, Lc)``, :param response: ``(B, Lr)``: right-padded token ids.
    :param replaced: ``(B, Lc + Lr)`` bool over ``[context; response]`` or None.
    :return: ``ids``, ``valid``, ``types`` (0 up to the first ``[SEP]``, 1 after) and
        ``replaced`` (or None), each ``(B, 2 + Lc + Lr)`` packed; ``unpack`` ``(B, Lc + Lr)``:
        the packed column of each ``[context; response]`` position (for its hidden state).
    """
    batch, lc = context.shape
    lr = response.shape[1]
    device = context.device
    cls = torch.full((batch, 1), cls_idx, dtype=context.dtype, device=device)
    sep = torch.full((batch, 1), sep_idx, dtype=context.dtype, device=device)
    ids = torch.cat([cls, context, sep, response], dim=1)
    valid = ids != padding_idx  # [CLS] and [SEP] are never the padding token
    types = torch.cat(
        [
            torch.zeros(batch, lc + 2, dtype=torch.long, device=device),
            torch.ones(batch, lr, dtype=torch.long, device=device),
        ],
        dim=1,
    )
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # valid first
    inverse = order.argsort(dim=1)
    columns = torch.cat(
        [torch.arange(1, lc + 1, device=device), torch.arange(lc + 2, lc + 2 + lr, device=device)]
    )
    packed = {
        'ids': ids.gather(1, order),
        'valid': valid.gather(1, order),
        'types': types.gather(1, order),
        'replaced': None,
        'unpack': inverse[:, columns],
    }
    if replaced is not None:
        no = torch.zeros(batch, 1, dtype=torch.bool, device=device)
        full = torch.cat([no, replaced[:, :lc], no, replaced[:, lc:]], dim=1)
        packed['replaced'] = full.gather(1, order)
    return packed


class HfPlato2Evaluator(nn.Module):
    """PLATO-2 stage 2.2 over an HF encoder: coherence p(l_r|c,r) (Eq. 7) + masked LM (Eq. 8).

    :param encoder: an ``AutoModel`` encoder (its pooler dropped; we pool ourselves).
    :param mask_idx: the tokenizer's ``[MASK]`` id, or None: a learned ``[MASK]`` vector.
    """

    def __init__(
        self,
        encoder: nn.Module,
        vocab_size: int,
        padding_idx: int,
        cls_idx: int,
        sep_idx: int,
        mask_idx: int | None = None,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        import inspect

        self.encoder = encoder
        hf.drop_unused_pooler(self, self.encoder, 'encoder')
        config = encoder.config
        dim = config.hidden_size
        self.padding_idx, self.cls_idx, self.sep_idx = padding_idx, cls_idx, sep_idx
        self.mask_idx = mask_idx
        self.bf16 = bf16
        parameters = inspect.signature(encoder.forward).parameters
        self._types = 'token_type_ids' in parameters and getattr(config, 'type_vocab_size', 0) > 1
        if mask_idx is None:
            self.mask_embedding = nn.Parameter(torch.randn(dim) * 0.02)
        self.pooler = nn.Linear(dim, dim)  # tanh(fc(h_[CLS]))
        self.classifier = nn.Linear(dim, 2)  # label 1 = coherent
        eps = float(getattr(config, 'layer_norm_eps', 1e-12))
        # BERT's MLM transform; the decoder is the word embeddings (tied) plus mlm_bias
        self.mlm_transform = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=eps)
        )
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))

    def load_pretrained_mlm_head(self, folder: str) -> bool:
        """Copy a BERT-style checkpoint's own MLM head (``cls.predictions.*``), if it has one."""
        path = os.path.join(folder, 'model.safetensors')
        if not os.path.isfile(path):
            return False
        from safetensors import safe_open

        names = {
            'cls.predictions.transform.dense.weight': self.mlm_transform[0].weight,
            'cls.predictions.transform.dense.bias': self.mlm_transform[0].bias,
            'cls.predictions.transform.LayerNorm.weight': self.mlm_transform[2].weight,
            'cls.predictions.transform.LayerNorm.bias': self.mlm_transform[2].bias,
            'cls.predictions.bias': self.mlm_bias,
        }
        with safe_open(path, framework='pt') as f:
            if not all(name in f.keys() for name in names):
                return False
            with torch.no_grad():
                for name, param in names.items():
                    value = f.get_tensor(name).float()
                    n = min(value.shape[0], param.shape[0])  # the bias may be resized
                    param[:n] = value[:n]
        return True

    def forward(
        self,
        context: torch.Tensor,
        response: torch.Tensor,
        replaced: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over ``[CLS] context [SEP] response``.

        :param replaced: ``(B, Lc + Lr)`` bool: inputs shown as ``[MASK]``, or None.
        :return: coherence logits ``(B, 2)`` and the token hidden states ``(B, Lc + Lr, D)`` in
            the ``[context; response]`` layout (for :meth:`mlm_logits`), both fp32.
        """
        packed = pack_pair(
            context, response, self.padding_idx, self.cls_idx, self.sep_idx, replaced
        )
        ids = packed['ids']
        kwargs: dict[str, Any] = {'attention_mask': packed['valid'].long()}
        if self._types:
            kwargs['token_type_ids'] = packed['types']
        if packed['replaced'] is not None and self.mask_idx is not None:
            ids = ids.masked_fill(packed['replaced'], self.mask_idx)
        if packed['replaced'] is not None and self.mask_idx is None:
            embeds = self.encoder.get_input_embeddings()(ids)
            n = int(packed['replaced'].sum())
            vectors = self.mask_embedding.expand(n, -1)
            kwargs['inputs_embeds'] = hf.inject_embeddings(embeds, packed['replaced'], vectors)
        else:
            kwargs['input_ids'] = ids
        with hf.autocast(self.bf16, ids.device):
            hidden = self.encoder(**kwargs).last_hidden_state
        hidden = hidden.float()
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # the [CLS] column is always first
        unpack = packed['unpack'][..., None].expand(-1, -1, hidden.shape[-1])
        return self.classifier(pooled), hidden.gather(1, unpack)

    def mlm_logits(self, token_hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM word scores (Eq. 8): decoder tied to the encoder's word embeddings."""
        words = self.encoder.get_input_embeddings().weight
        return F.linear(self.mlm_transform(token_hidden), words.float(), self.mlm_bias)

    @torch.no_grad()
    def coherence(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """p(l_r = 1 | c, r) of each row: the reranking score (no masking)."""
        logits, _ = self(context, response)
        return logits.float().softmax(dim=-1)[:, 1]


__all__ = ['HfPlato2Evaluator', 'HfPlato2Generator', 'HfUnifiedTransformer', 'pack_pair']

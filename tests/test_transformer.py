"""The shared transformer's initialisation: what made from-scratch matching models learnable."""

import torch
import torch.nn.functional as F

from parlai_ext.modules.transformer import Embeddings, TransformerEncoder


def test_token_type_and_position_tables_start_on_one_scale():
    embeddings = Embeddings(vocab_size=500, dim=64, n_positions=128, n_types=2)
    scales = [t.weight.std().item() for t in (embeddings.tokens, embeddings.positions)]
    scales.append(embeddings.types.weight.std().item())  # only 2 x 64 values: loose bound
    assert all(abs(scale - 64**-0.5) < 0.4 * 64**-0.5 for scale in scales), scales


def _matching_batch(generator: torch.Generator, n: int = 32, vocab: int = 100):
    """[CLS] context (10 tokens) response (3 tokens): label 1 when the response's tokens are
    taken from the context, 0 when they are random."""
    context = torch.randint(4, vocab, (n, 10), generator=generator)
    picks = torch.randint(0, 10, (n, 3), generator=generator)
    positive = torch.gather(context, 1, picks)
    negative = torch.randint(4, vocab, (n, 3), generator=generator)
    cls = torch.ones(n, 1, dtype=torch.long)
    ids = torch.cat(
        [torch.cat([cls, context, positive], 1), torch.cat([cls, context, negative], 1)]
    )
    types = torch.cat([torch.zeros(2 * n, 11), torch.ones(2 * n, 3)], 1).long()
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).long()
    return ids, types, labels


def test_from_scratch_cross_encoder_learns_to_match_response_to_context():
    """With the type table at N(0, 1) (30x the tokens) or N(0, 0.02) linear layers at this
    size, the [CLS] state ignored the tokens and this stayed at 50% accuracy."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    encoder = TransformerEncoder(100, dim=64, n_layers=2, n_heads=4, ffn_dim=256, dropout=0.0)
    head = torch.nn.Linear(64, 2)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
    for _ in range(STEPS):
        ids, types, labels = _matching_batch(generator)
        loss = F.cross_entropy(head(encoder(ids, types)[:, 0]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ids, types, labels = _matching_batch(torch.Generator().manual_seed(1), n=256)
    with torch.no_grad():
        accuracy = (head(encoder(ids, types)[:, 0]).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.65, accuracy


STEPS = 600


def test_hf_encoder_drops_the_unused_pooler_so_every_parameter_gets_a_gradient(tmp_path):
    """DDP stops on a parameter without gradient: BERT's pooler is never used by our encoders.

    Checkpoints saved with the pooler still load (its weights are ignored).
    """
    from transformers import BertConfig, BertModel

    from parlai_ext.modules.transformer import HfEncoder

    config = BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)
    with_pooler = {f'model.{k}': v for k, v in BertModel(config).state_dict().items()}
    assert any('pooler' in k for k in with_pooler)

    encoder = HfEncoder(str(tmp_path))
    assert not any('pooler' in name for name, _ in encoder.named_parameters())
    ids = torch.randint(1, 20, (2, 5))
    encoder(ids, None, torch.ones_like(ids, dtype=torch.bool)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())

    encoder.load_state_dict(with_pooler)  # strict: only the pooler keys are dropped
    assert torch.equal(
        encoder.model.embeddings.word_embeddings.weight,
        with_pooler['model.embeddings.word_embeddings.weight'],
    )

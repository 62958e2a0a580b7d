"""P2Bot's transmitter (Liu et al., ACL 2020, §3.1) in the self-play world's learner (tiny models).

Each test checks a value that would differ if the code were wrong: the training loss as the
weighted sum of the MLE and next-utterance-prediction terms, beam hypotheses and label
candidates ranked by Eq. 3 (Eq. 2's length-normalised log-probability mixed with the NUP
head), the context kept within its token budget (newest turns first, speaker markers), and the
NUP distractors of evaluation and validation (issue #21). The self-play math is in
``test_p2bot_selfplay.py``, whose helpers (the saved user, the world, reply vectors) these share.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_p2bot_selfplay import make_world, reply_vec, save_user


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    return save_user(tmp_path_factory.mktemp('p2tx'))


def test_transmitter_loss_is_weighted_mle_plus_nup_by_value(setup):
    from parlai.core.torch_agent import Batch

    world = make_world(setup, '--mle-coef', '0.6', '--nup-coef', '0.4')
    agent = world.learner
    model = agent._model().eval()  # no dropout: the hand computation below is exact
    context = agent._pad_contexts(
        [agent.context_vec(['i play the cello.'], ['hello .']), agent.context_vec([], ['hi'])]
    )  # variable lengths: the second row is padded
    labels = agent._pad_tensor(
        [reply_vec(agent, 'the cello'), reply_vec(agent, 'my bees made')], is_label=True
    )[0]
    distractors = agent._pad_tensor(
        [reply_vec(agent, 'honey'), reply_vec(agent, 'a big dog')], is_label=True
    )[0]
    batch = Batch(batchsize=2, text_vec=context, label_vec=labels, distractor_vec=distractors)
    agent.criterion = torch.nn.CrossEntropyLoss(ignore_index=agent.NULL_IDX, reduction='none')
    with torch.no_grad():
        loss = agent.compute_loss(batch).item()
        pos = model.transmitter(context, labels)
        neg = model.transmitter(context, distractors)
        log_probs = F.log_softmax(model.mask_logits(pos.lm_logits).float(), -1)
        mask = labels != agent.NULL_IDX
        picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        mle = -(picked * mask).sum() / mask.sum()  # Eq. 1, mean over target tokens
        nup = (
            -(
                F.log_softmax(pos.nup_logits, -1)[:, 1].sum()
                + F.log_softmax(neg.nup_logits, -1)[:, 0].sum()
            )
            / 4
        )  # class 1 for the true reply, 0 for the distractor
    assert loss == pytest.approx(0.6 * mle.item() + 0.4 * nup.item(), rel=1e-4)
    # nup_pair_acc: per row, is the true reply's log p(y=1) above the distractor's (Eq. 3)?
    for seed in range(50):  # a head with one row right and one wrong: the row order matters
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            model.transmitter.nup_head.weight.normal_(0, 2.0, generator=generator)
            pos = model.transmitter(context, labels)
            neg = model.transmitter(context, distractors)
        expected = (
            F.log_softmax(pos.nup_logits, -1)[:, 1] > F.log_softmax(neg.nup_logits, -1)[:, 1]
        ).tolist()
        if len(set(expected)) == 2:
            break
    assert len(set(expected)) == 2
    agent._local_metrics.clear()
    with torch.no_grad():
        agent.compute_loss(batch)
    assert [m.value() for m in agent._local_metrics['nup_pair_acc']] == [float(e) for e in expected]


def test_beam_hypotheses_and_candidates_are_ranked_by_eq3(setup):
    from parlai.core.torch_agent import Batch

    world = make_world(setup, '--rerank-alpha', '0.3')
    agent = world.learner
    model = agent._model().eval()
    with torch.no_grad():  # a NUP head that disagrees with the LM somewhere
        model.transmitter.nup_head.weight.normal_(0, 2.0)
    context = agent.context_vec(['i play the cello.'], ['hello .'])
    texts = ['the cello', 'my bees made honey', 'a big dog', 'cello']
    replies = [reply_vec(agent, t) for t in texts]

    def eq3(reply):
        with torch.no_grad():
            out = model.transmitter(context[None], reply[None])
        lp = F.log_softmax(model.mask_logits(out.lm_logits).float(), -1)[0]
        lennorm = sum(lp[t, reply[t]].item() for t in range(len(reply))) / len(reply)  # Eq. 2
        return 0.3 * lennorm + 0.7 * F.log_softmax(out.nup_logits.float(), -1)[0, 1].item()

    expected = [eq3(r) for r in replies]
    batch = Batch(batchsize=1, text_vec=context[None])
    hyps = [[(torch.cat([torch.tensor([agent.START_IDX]), r]), torch.tensor(0.0)) for r in replies]]
    with torch.no_grad():
        ranked = agent._rerank_beams(batch, hyps)[0]
    order = sorted(range(4), key=lambda i: -expected[i])
    assert [texts.index(agent.decode_text(h[0][1:])) for h in ranked] == order
    assert [float(h[1]) for h in ranked] == pytest.approx([expected[i] for i in order], rel=1e-4)
    # hits@1 ranking of label candidates: the same scores
    batch = Batch(batchsize=1, text_vec=context[None], candidate_vecs=[replies], candidates=[texts])
    choices, scores = agent.rank_eval_label_candidates(batch, 1)
    assert choices[0] == [texts[i] for i in order]
    assert scores[0] == pytest.approx([expected[i] for i in order], rel=1e-4)


def test_context_keeps_the_newest_turns_within_the_budget(setup):
    world = make_world(setup)
    agent = world.learner
    v = agent.dict.txt2vec
    turns = ['my bees made', 'the cello', 'honey again .']  # partner, self, partner (last)
    ps, p, s = agent.persona_idx, agent.partner_idx, agent.self_idx
    agent.text_truncate = 1 + (1 + len(v('the cello'))) + (1 + len(v('honey again .')))
    assert agent.context_vec([], turns).tolist() == [ps, s, *v('the cello'), p, *v('honey again .')]
    agent.text_truncate -= 1  # the oldest kept turn is cut from the left (its marker first)
    assert agent.context_vec([], turns).tolist() == [ps, *v('the cello'), p, *v('honey again .')]
    agent.text_truncate = 100
    full = agent.context_vec(['i play the cello.'], turns).tolist()
    assert full == [
        ps,
        *v('i play the cello.'),
        p,
        *v('my bees made'),
        s,
        *v('the cello'),
        p,
        *v('honey again .'),
    ]


def test_nup_distractors_in_evaluation_and_validation_are_other_replies(setup):
    """Issue #21: the distractor pool held training replies only, so a loaded transmitter's
    evaluation (and train_model's validation copy, which had its own empty pool) scored every
    true reply against the empty reply."""
    from parlai.core.agents import create_agent_from_model_file, create_agent_from_shared
    from parlai.core.message import Message

    def observe(agent, text, label, key='eval_labels'):
        agent.reset()
        return agent.observe(Message({'text': text, key: [label], 'episode_done': True}))

    def decoded(agent, batch):
        return [agent._v2t(row) for row in batch.distractor_vec]

    loaded = create_agent_from_model_file(setup['user'], {'datatype': 'valid'})
    first = observe(loaded, 'your persona: i like cats.\nhello', 'i like the dog')
    second = observe(loaded, 'your persona: i ski.\nhi there', 'my bees made honey')
    assert first['p2bot_distractor'] == ''  # nothing seen yet: the batch supplies one
    assert second['p2bot_distractor'] == 'i like the dog'  # an earlier evaluation reply
    batch = loaded.batchify([first, second])
    assert decoded(loaded, batch) == [
        loaded._v2t(loaded.dict.txt2vec(t)) for t in ('my bees made honey', 'i like the dog')
    ]
    # a copy made by share() (train_model's validation) draws from the training replies
    trainer = create_agent_from_model_file(setup['user'], {'datatype': 'train'})
    observe(trainer, 'your persona: i ski.\nhello', 'the cello is loud', key='labels')
    copy_agent = create_agent_from_shared(trainer.share())
    third = observe(copy_agent, 'your persona: i like cats.\nhi', 'i like the dog')
    assert third['p2bot_distractor'] == 'the cello is loud'
    # evaluation replies never enter the training pool
    assert list(trainer.recent_labels) == ['the cello is loud']
    # the evaluation pool is shared by the batch's copies: a copy draws another stream's reply
    row_copy = create_agent_from_shared(loaded.share())
    fourth = observe(row_copy, 'your persona: i ski.\nhello', 'i like the dog')
    assert fourth['p2bot_distractor'] == 'my bees made honey'
    assert type(trainer)._batch_distractor([['a'], ['a'], ['b']], 0) == 'b'  # never the gold
    assert type(trainer)._batch_distractor([['a'], ['b'], ['c']], 2) == 'a'  # the next row

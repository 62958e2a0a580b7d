"""``parlai generate_pseudo_refs``: N pseudo references per context by nucleus sampling (§5).

Multi-referenced training, data side (``../shared/papers/multiref_vhred_lgm.txt`` §5): a
teacher generator trained on the single-reference data writes N hypotheses for every training
context by nucleus sampling (p = 0.95; N = 100 in the paper); the student then trains on them
(``-t multiref_ext``, see ``tasks/multiref/agents.py``). Any ParlAI generator model file works
(``TorchGeneratorAgent``: ours, ParlAI's, Hugging Face ones)::

    parlai generate_pseudo_refs -mf teacher/model -t dailydialog_ext \\
        --dailydialog-data-dir ../shared/data/dailydialog -o dd_train.hyps.jsonl \\
        --num-hyps 5 -bs 64

The teacher is read once, in order (default ``-dt train:evalmode``). Each context is observed by
the model exactly as in ``eval_model`` (its own history and truncation), then copied N times
into one batch and decoded by nucleus sampling (beam size 1), so the N hypotheses are
independent samples. Two decoders draw from the same distribution (``--hyp-decoder``):

- ``batched`` (the default where it applies): one vectorised loop over the whole batch through
  the model's own ParlAI interface (``encoder``, ``decoder``, ``output``, incremental state),
  the project's :func:`~parlai_ext.modules.sampling.sample` for the draw. ParlAI's
  ``_generate`` runs one ``TreeSearch`` object per row, each sorting the whole vocabulary at
  every step; with hundreds of rows per batch that loop, not the model, is the cost (4.3x
  slower than ``batched`` for a small HRED teacher on a CPU: ``bench/pseudo_refs_speed.py``).
  Used for every ``TorchGeneratorAgent`` that keeps ParlAI's ``_generate`` and has no n-gram
  blocking or block list.
- ``parlai``: ``TorchGeneratorAgent._generate`` with ``--inference nucleus --topp`` (what
  ``auto`` picks for agents with a generation of their own, e.g. PLATO-2's latent reranking).

Output: one JSON object per line, one line per teacher example, in teacher order::

    {"index": 0, "episode": 0, "turn": 0, "context": ["turn 1", "turn 2", ...],
     "response": "the ground truth", "hypotheses": ["h1", ..., "hN"], "logprobs": [...]}

``context`` holds every earlier turn of the episode (texts and gold labels, as the teacher
gives them; a multi-line text stays one string) and ends with the example's own text;
``logprobs`` score each hypothesis: with ``batched``, the sum of its tokens' log-probabilities
under the teacher's full (unfiltered) distribution, end token included; with ``parlai``,
ParlAI's search score (log-probabilities under the renormalised nucleus, divided by its length
penalty). ``<outfile>.meta.json`` records model, task, datatype, N, p, maximum length, seed and
decoder.

Resumable: lines are written a whole batch at a time and flushed. Re-running the same command
keeps every complete line, drops a partial last line (an interrupted write), checks that the
teacher's example at that position is the one recorded, and continues with the next example:
no line is ever duplicated or lost. A different N, p, model or task for an existing file is an
error (pick another ``--outfile``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent
from parlai.core.message import Message
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript, register_script
from parlai.core.teachers import create_task_agent_from_taskname
from parlai.core.torch_agent import Batch
from parlai.core.torch_generator_agent import TorchGeneratorAgent
from parlai.utils import logging
from tqdm import tqdm

from parlai_ext.io import atomic_write
from parlai_ext.modules.sampling import sample

FORMAT = 'parlai_ext.pseudo_refs/1'
META_KEYS = (
    'format', 'model_file', 'task', 'datatype', 'num_hyps', 'topp', 'max_len', 'decoder',
)  # fmt: skip
DECODERS = ('auto', 'batched', 'parlai')
ENCODE_ONCE = ('auto', 'yes', 'no')


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    if parser is None:
        parser = ParlaiParser(True, True, 'Pseudo references by nucleus sampling (multi-ref §5)')
    group = parser.add_argument_group('Pseudo references')
    group.add_argument('-o', '--outfile', required=True, help='output JSONL (see the docstring)')
    group.add_argument('--num-hyps', type=int, default=100, help='hypotheses per context (§5: 100)')
    group.add_argument('--hyp-topp', type=float, default=0.95, help='nucleus p (§5: 0.95)')
    group.add_argument('--hyp-max-len', type=int, default=40, help='maximum tokens per hypothesis')
    group.add_argument('--hyp-seed', type=int, default=0, help='torch seed (+ lines done)')
    group.add_argument(
        '--max-new-contexts',
        type=int,
        default=-1,
        help='stop after writing this many new lines (for chunked runs); -1: to the end',
    )
    group.add_argument('--progress', type='bool', default=True, help='show a progress bar')
    group.add_argument(
        '--hyp-decoder',
        choices=DECODERS,
        default='auto',
        help="batched: one vectorised sampling loop per batch (fast); parlai: ParlAI's "
        'per-row tree search; auto: batched where the agent allows it (see the docstring)',
    )
    group.add_argument(
        '--hyp-encode-once',
        choices=ENCODE_ONCE,
        default='auto',
        help='batched decoder: encode each context once and copy its encoder state to its N '
        'rows (yes), or encode the N copies (no); auto: yes for encoders without randomness '
        '(pretrained causal LMs: their context key/value cache), no otherwise (a VHRED draws '
        'z in its encoder: one encoding per row keeps the N hypotheses independent)',
    )
    parser.set_defaults(datatype='train:evalmode', batchsize=8)
    return parser


# --- resuming --------------------------------------------------------------------------------
def _meta(opt: Opt, decoder: str) -> dict:
    """What a file was written with (``decoder``: the resolved one, never ``auto``)."""
    return {
        'format': FORMAT,
        'model_file': os.path.abspath(opt['model_file']),
        'task': opt['task'],
        'datatype': opt['datatype'],
        'num_hyps': opt['num_hyps'],
        'topp': opt['hyp_topp'],
        'max_len': opt['hyp_max_len'],
        'seed': opt['hyp_seed'],
        'decoder': decoder,
    }


def prepare_resume(outfile: str, meta: dict) -> tuple[int, dict | None]:
    """Lines already complete in ``outfile`` (a partial last line is cut off) and the last one.

    Writes ``<outfile>.meta.json`` for a new file; for an existing one it must agree.
    """
    meta_path = outfile + '.meta.json'
    if os.path.exists(meta_path):
        with open(meta_path) as handle:
            old = json.load(handle)
        old.setdefault('decoder', 'parlai')  # files written before --hyp-decoder existed
        different = [k for k in META_KEYS if old.get(k) != meta.get(k)]
        if different:
            raise ValueError(
                f'{outfile} was written with other settings ({", ".join(different)}: '
                f'{[old.get(k) for k in different]} vs {[meta.get(k) for k in different]}); '
                'use another --outfile or remove it'
            )
    elif os.path.exists(outfile) and os.path.getsize(outfile) > 0:
        raise ValueError(f'{outfile} exists without {meta_path}; not a file of this script')
    else:
        atomic_write(meta_path, json.dumps(meta, indent=1))
    if not os.path.exists(outfile):
        return 0, None
    with open(outfile, 'rb') as handle:
        data = handle.read()
    complete = data[: data.rfind(b'\n') + 1]
    if len(complete) != len(data):
        logging.warning(f'{outfile}: dropping a partial last line ({len(data) - len(complete)} B)')
        with open(outfile, 'r+b') as handle:
            handle.truncate(len(complete))
    lines = complete.decode('utf-8').splitlines()
    last = None
    for number, line in enumerate(lines):
        last = json.loads(line)
        if last.get('index') != number:
            raise ValueError(f'{outfile}:{number + 1}: index {last.get("index")} != {number}')
    return len(lines), last


# --- the teacher stream ----------------------------------------------------------------------
def iterate_examples(teacher) -> Iterator[tuple[dict, Message]]:
    """(position, message) for every example of one pass over the teacher, in order."""
    index = episode = turn = 0
    context: list[str] = []
    while not teacher.epoch_done():
        message = teacher.act()
        if message is None or message.is_padding():
            break
        labels = message.get('labels', message.get('eval_labels'))
        if not labels:
            raise ValueError(f'example {index} of {teacher.getID()} has no label')
        context.append(message.get('text', ''))
        position = {
            'index': index,
            'episode': episode,
            'turn': turn,
            'context': list(context),
            'response': labels[0],
        }
        yield position, message
        context.append(labels[0])
        index += 1
        turn += 1
        if message.get('episode_done'):
            episode += 1
            turn = 0
            context = []


def batched_decoder_applies(agent) -> bool:
    """True when the batched loop decodes exactly as ParlAI's search would, one row at a time.

    That is: a ``TorchGeneratorAgent`` that keeps ParlAI's ``_generate`` (no latent sampling or
    reranking of its own; a wrapper marked ``same_as_parlai_search``, which only sets up and
    resets decoding buffers around ParlAI's search, counts as ParlAI's) and blocks nothing
    (n-gram, context n-gram, block list).
    """
    generate = type(agent)._generate
    return (
        isinstance(agent, TorchGeneratorAgent)
        and (
            generate is TorchGeneratorAgent._generate
            or getattr(generate, 'same_as_parlai_search', False)
        )
        and (agent.opt.get('beam_block_ngram') or -1) <= 0
        and (agent.opt.get('beam_context_block_ngram') or -1) <= 0
        and not agent.opt.get('beam_block_list_filename')
    )


def resolve_decoder(agent, requested: str) -> str:
    if requested == 'auto':
        return 'batched' if batched_decoder_applies(agent) else 'parlai'
    if requested == 'batched' and not batched_decoder_applies(agent):
        raise ValueError(
            f'--hyp-decoder batched: {type(agent).__name__} has a generation of its own or '
            'n-gram blocking; use --hyp-decoder parlai (or auto)'
        )
    return requested


def deterministic_encoder(agent) -> bool:
    """True when the model's ``encoder`` draws nothing at random in evaluation mode, so one
    encoding of a context can serve all its N hypotheses (a pretrained causal LM's key/value
    cache); VHRED-like encoders sample a latent variable there."""
    from parlai_ext.agents.hf import HfGeneratorModel

    return isinstance(getattr(agent.model, 'module', agent.model), HfGeneratorModel)


def resolve_encode_once(agent, requested: str, decoder: str) -> bool:
    if decoder != 'batched':
        return False
    if requested == 'auto':
        return deterministic_encoder(agent)
    return requested == 'yes'


@torch.no_grad()
def batched_nucleus(
    agent, batch: Batch, max_len: int, top_p: float, repeat: int = 1
) -> list[tuple[str, float]]:
    """One nucleus sample per row of ``batch``, all rows in one vectorised loop.

    ``repeat`` > 1: ``batch`` holds each context once; its encoder state is copied to
    ``repeat`` consecutive rows (``reorder_encoder_states``, as ParlAI's beam search expands
    it), which then sample independently: ``repeat`` samples per context.

    The model is driven through the calls ParlAI's ``_generate`` makes (encoder and its
    reorder, initial and next decoder input, incremental decoder, output layer,
    ``--temperature``, ``--beam-min-length``), so any ``TorchGeneratorAgent`` works; only the
    per-row ``TreeSearch`` (and its identity cache reorders) is replaced. Returns
    (text, sum of token log-probabilities under the full distribution) per row.
    """
    model = getattr(agent.model, 'module', agent.model)
    encoder_states = model.encoder(*agent._encoder_input(batch))
    rows = batch.batchsize * repeat
    device = (batch.text_vec if batch.text_vec is not None else batch.label_vec).device
    same_rows = torch.arange(rows, device=device)
    # kept: part of the encoder contract (a model may finish its encoding here, as PLATO-2's
    # pending context does); the per-step incremental-state reorder that ParlAI also makes is
    # left out: with beam size 1 and no row ever dropped it would copy the whole key/value
    # cache unchanged at every step
    expand = torch.arange(batch.batchsize, device=device).repeat_interleave(repeat)
    encoder_states = model.reorder_encoder_states(encoder_states, expand)
    decoder_input = agent._get_initial_decoder_input(rows, 1, device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    total = torch.zeros(rows, device=device)
    tokens, incr_state = [], None
    for step in range(max_len):
        hidden, incr_state = model.decoder(decoder_input, encoder_states, incr_state)
        logits = model.output(hidden[:, -1:, :])[:, 0].float()
        if agent.temperature != 1.0:
            logits = logits / agent.temperature
        if step < agent.beam_min_length:
            logits[:, agent.END_IDX] = float('-inf')
        logprobs = F.log_softmax(logits, dim=-1)
        active = (~done).nonzero().squeeze(1)  # finished rows are not sampled again
        chosen = torch.full_like(done, agent.END_IDX, dtype=torch.long)
        chosen[active] = sample(logprobs[active], top_p=top_p)
        if step == max_len - 1:  # ParlAI forces an end token when a hypothesis never ends
            chosen = chosen.masked_fill(~done, agent.END_IDX)
        total += logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(done, 0.0)
        tokens.append(chosen)  # finished rows already hold the end token
        done = done | (chosen == agent.END_IDX)
        if bool(done.all()):
            break
        decoder_input = agent._get_next_decoder_input(decoder_input, chosen[:, None], same_rows)
    ids = torch.stack(tokens, dim=1).tolist()
    return [(agent._v2t(row), float(score)) for row, score in zip(ids, total.tolist())]


def sample_hypotheses(
    agent,
    observations: list[Message],
    n: int,
    max_len: int,
    decoder: str = 'parlai',
    encode_once: bool = False,
) -> list[list]:
    """n independent nucleus samples for each observation: [(text, logprob)] per observation.

    ``encode_once`` (batched decoder only): each context is encoded once for its n rows.
    """
    if encode_once and decoder == 'batched':
        return _sample_encoding_once(agent, observations, n, max_len)
    rows = [obs for obs in observations for _ in range(n)]
    results: list[tuple[str, float]] = [('', float('-inf'))] * len(rows)
    step = max(1, agent.opt.get('batchsize', 1) or 1)
    for start in range(0, len(rows), max(step, n)):
        chunk = rows[start : start + max(step, n)]
        batch = agent.batchify(chunk)
        if batch.batchsize == 0:
            continue
        if agent.use_cuda:
            batch = batch.to(0 if agent.opt['gpu'] == -1 else agent.opt['gpu'])
        agent.model.eval()
        if decoder == 'batched':
            samples = batched_nucleus(agent, batch, max_len, agent.opt['topp'])
        else:
            with torch.no_grad():
                preds, _ = agent._generate(batch, 1, max_len)
            samples = [(agent._v2t(tokens), float(score)) for tokens, score, *_rest in preds]
        for i, text_score in zip(batch.valid_indices.tolist(), samples):
            results[start + i] = text_score
    return [results[k * n : (k + 1) * n] for k in range(len(observations))]


def _sample_encoding_once(agent, observations: list[Message], n: int, max_len: int) -> list[list]:
    """:func:`sample_hypotheses` with one encoding per context (``-bs``: rows per forward)."""
    results: list[list] = [[('', float('-inf'))] * n for _ in observations]
    step = max(1, (agent.opt.get('batchsize', 1) or 1) // n)  # contexts per forward
    agent.model.eval()
    for start in range(0, len(observations), step):
        batch = agent.batchify(observations[start : start + step])
        if batch.batchsize == 0:
            continue
        if agent.use_cuda:
            batch = batch.to(0 if agent.opt['gpu'] == -1 else agent.opt['gpu'])
        samples = batched_nucleus(agent, batch, max_len, agent.opt['topp'], repeat=n)
        for j, i in enumerate(batch.valid_indices.tolist()):
            results[start + i] = samples[j * n : (j + 1) * n]
    return results


def generate_pseudo_refs(opt: Opt) -> dict:
    """Write (or continue) the JSONL file; returns counts."""
    outfile, n = opt['outfile'], opt['num_hyps']
    if n < 1:
        raise ValueError('--num-hyps must be >= 1')
    agent = create_agent(opt, requireModelExists=True)
    agent.opt['inference'], agent.opt['topp'], agent.opt['beam_size'] = (
        'nucleus',
        opt['hyp_topp'],
        1,
    )
    agent.beam_size = 1
    decoder = resolve_decoder(agent, opt['hyp_decoder'])
    encode_once = resolve_encode_once(agent, opt.get('hyp_encode_once') or 'auto', decoder)
    logging.info(f'decoder: {decoder}, one encoding per context: {encode_once}')
    done, last = prepare_resume(outfile, _meta(opt, decoder))
    teacher_opt = opt.copy()
    teacher_opt['batchsize'] = 1  # a teacher with bsz > 1 steps over episodes in eval modes
    teacher = create_task_agent_from_taskname(teacher_opt)[0]
    total = teacher.num_examples()
    if done >= total:
        logging.info(f'{outfile}: all {total} contexts already done')
        return {'done': done, 'new': 0, 'total': total}
    torch.manual_seed(opt['hyp_seed'] + done)
    contexts_per_batch = max(1, (opt.get('batchsize') or 1) // n)  # -bs: rows per forward
    limit = opt['max_new_contexts'] if opt['max_new_contexts'] >= 0 else total
    pending: list[tuple[dict, Message]] = []
    written = 0
    bar = tqdm(total=total, initial=done, unit='ctx', disable=not opt['progress'])
    with open(outfile, 'a', encoding='utf-8') as handle:

        def flush() -> None:
            nonlocal written
            hyps = sample_hypotheses(
                agent, [obs for _, obs in pending], n, opt['hyp_max_len'], decoder, encode_once
            )
            lines = []
            for (position, _), samples in zip(pending, hyps):
                record = dict(position)
                record['hypotheses'] = [text for text, _ in samples]
                record['logprobs'] = [round(score, 4) for _, score in samples]
                lines.append(json.dumps(record, ensure_ascii=False) + '\n')
            handle.write(''.join(lines))
            handle.flush()
            os.fsync(handle.fileno())
            written += len(pending)
            bar.update(len(pending))
            pending.clear()

        for position, message in iterate_examples(teacher):
            observation = agent.observe(message)
            agent.self_observe(Message({'text': position['response']}))
            index = position['index']
            if index < done:
                if index == done - 1 and last is not None:
                    same = (last['context'], last['response']) == (
                        position['context'],
                        position['response'],
                    )
                    if not same:
                        raise ValueError(
                            f'{outfile}: line {done} does not match example {index} of the '
                            'teacher (different data or order?)'
                        )
                continue
            if written + len(pending) >= limit:
                break
            pending.append((position, observation))
            if len(pending) >= contexts_per_batch:
                flush()
        if pending:
            flush()
    bar.close()
    logging.info(f'{outfile}: {done + written} of {total} contexts ({written} new)')
    return {'done': done + written, 'new': written, 'total': total}


@register_script('generate_pseudo_refs', aliases=['pseudo_refs'])
class GeneratePseudoRefs(ParlaiScript):
    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> dict:
        return generate_pseudo_refs(self.opt)


if __name__ == '__main__':
    GeneratePseudoRefs.main()

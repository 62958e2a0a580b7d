"""Mutants of PLATO-2 (model, losses, agent).

Converted from the PLATO-2 engineer's hand-made list, issue #18. Run: .venv/bin/python tests/mutants/run.py --system plato2
"""

P = 'parlai_ext/modules/plato2.py'
L = 'parlai_ext/losses/plato2.py'
A = 'parlai_ext/agents/plato2.py'
E = 'parlai_ext/agents/plato2_evaluator.py'
S = 'parlai_ext/agents/plato2_stages.py'
B = 'parlai_ext/agents/batching.py'  # (context, candidate) pairs of score_candidates

MATH = ['tests/test_plato2_math.py', 'tests/test_plato2_agents.py']
PL = 'tests/test_plato2.py'
UT, OP = 'tests/test_unified_transformer.py', 'tests/test_optim.py'
KN = 'tests/test_knover.py'  # the Knover-style rerank and token [MASK]/[CLS] (3 s)
# the slow training tests are left out
FAST = [
    '-k',
    'not learns_to_rank and not cli_training and not from_scratch and not hf_encoder and not size_presets',
]
TESTS = {
    P: [*MATH, PL, OP, KN, *FAST],
    L: [*MATH, PL, OP, KN, *FAST],
    A: [*MATH, PL, OP, KN, *FAST],
    E: [*MATH, PL, OP, KN, *FAST],
    S: [*MATH, PL, OP, KN, *FAST],
    B: [*MATH, PL, OP, KN, *FAST],
}

MUTANTS = [
    # P: plato2 modules
    (
        P,
        'pooled = torch.tanh(self.recognition(hidden[:, 0]))',
        'pooled = torch.tanh(self.recognition(hidden[:, 1]))',
    ),
    (
        P,
        'pooled = torch.tanh(self.recognition(hidden[:, 0]))',
        'pooled = self.recognition(hidden[:, 0])',
    ),
    (
        P,
        'return F.linear(pooled, self.latent_embedding, self.recognition_bias)',
        'return F.linear(pooled, self.latent_embedding)',
    ),
    (
        P,
        'hidden, _ = self.encode(context, response, prefix, bidirectional=True)\n        pooled',
        'hidden, _ = self.encode(context, response, prefix)\n        pooled',
    ),
    (
        P,
        'return (weights @ self.latent_embedding)[:, None, :]',
        'return (weights.softmax(-1) @ self.latent_embedding)[:, None, :]',
    ),
    (
        P,
        # re-matched: the BOW head projects through the tied embeddings (project)
        'return project(self.bow_transform(latent_hidden)) + self.bow_bias',
        'return project(self.bow_transform(latent_hidden))',
    ),
    (
        P,
        'nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))',
        'nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm(dim))',
    ),
    (
        P,
        'weights = gumbel_softmax(posterior_logits, self.tau)',
        'weights = gumbel_softmax(posterior_logits)',
    ),
    (
        P,
        'weights = gumbel_softmax(posterior_logits, self.tau)',
        'weights = gumbel_softmax(posterior_logits.detach(), self.tau)',
    ),
    (
        P,
        'weights = gumbel_softmax(posterior_logits, self.tau)',
        'weights = F.softmax(posterior_logits, -1)',
    ),
    (
        P,
        '        if self.training:\n            weights = gumbel',
        '        if not self.training:\n            weights = gumbel',
    ),
    (P, 'bow_logits=self.bow_logits(hidden[:, 0]),', 'bow_logits=self.bow_logits(hidden[:, 1]),'),
    (P, 'bow_logits=self.bow_logits(hidden[:, 0]),', 'bow_logits=self.bow_logits(hidden[:, -1]),'),
    (
        P,
        'latent_ids = torch.arange(n_latent, device=context.device).repeat(batch)',
        'latent_ids = torch.arange(n_latent, device=context.device).repeat_interleave(batch)',
    ),
    (
        P,
        'return self.encode_context(context, self.latent_embedding[latent_ids][:, None, :])',
        'return self.encode_context(context, self.latent_embedding[latent_ids * 0][:, None, :])',
    ),
    (P, 'if n_latent < 1:', 'if n_latent < 0:'),
    (
        P,
        'pooled = torch.tanh(self.pooler(hidden[:, 0]))',
        'pooled = torch.tanh(self.pooler(hidden[:, 1]))',
    ),
    (
        P,
        # re-matched: the [CLS] slot is optional (cls='slot' | 'token')
        'return self.classifier(pooled), (hidden[:, 1:] if slot else hidden)',
        'return self.classifier(pooled), (hidden[:, :-1] if slot else hidden)',
    ),
    (
        P,
        'return logits.float().softmax(dim=-1)[:, 1]',
        'return logits.float().softmax(dim=-1)[:, 0]',
    ),
    (
        P,
        # re-matched: the [MASK] input is mask_vector(self) (learned slot or a token's row)
        '            replacement=mask_vector(self),',
        '            replacement=self.cls_embedding,',
    ),
    (
        P,
        'prefix = self.cls_embedding.expand(context.shape[0], 1, -1)',
        'prefix = self.mask_embedding.expand(context.shape[0], 1, -1)',
    ),
    # L: losses
    (
        L,
        'per_token = -log_f.gather(1, targets.masked_fill(~valid, 0)) * valid',
        'per_token = -log_f.gather(1, targets.masked_fill(~valid, 0))',
    ),
    (L, 'return per_token.sum() / valid.sum().clamp(min=1)', 'return per_token.mean()'),
    (L, 'negatives = response.roll(-1, dims=0)', 'negatives = response.roll(1, dims=0)'),
    (L, 'negatives = response.roll(-1, dims=0)', 'negatives = response'),
    (L, '    if batch < 2:\n', '    if batch < 3:\n'),
    (L, 'selected = maskable & (draw < prob)', 'selected = maskable & (draw > prob)'),
    (L, 'replaced = selected & (kind < 0.8)', 'replaced = selected & (kind < 0.9)'),
    (
        L,
        'randomised = selected & (kind >= 0.8) & (kind < 0.9)',
        'randomised = selected & (kind >= 0.8)',
    ),
    (
        L,
        'inputs = torch.where(randomised, random_ids, tokens)',
        'inputs = torch.where(selected, random_ids, tokens)',
    ),
    (L, '        random_low, vocab_size, tokens.shape', '        0, vocab_size, tokens.shape'),
    (
        L,
        'return F.cross_entropy(logits.float(), targets)',
        "return F.cross_entropy(logits.float(), targets, reduction='sum')",
    ),
    (
        L,
        'return F.cross_entropy(logits.float(), labels)',
        'return F.cross_entropy(logits.float(), 1 - labels)',
    ),
    (
        L,
        'return (log_p.exp() * log_p).sum(dim=-1).mean()',
        'return -(log_p.exp() * log_p).sum(dim=-1).mean()',
    ),
    (L, 'return (log_p.exp() * log_p).sum(dim=-1).mean()', 'return (log_p.exp() * log_p).sum()'),
    (L, 'return -(log_p.exp() * log_p).sum(dim=-1)', 'return -(log_p * log_p).sum(dim=-1)'),
    # A: agents
    (
        S,
        "            inherited = 'truncate' not in given and value is not None",
        '            inherited = False',
    ),
    (
        S,
        "            inherited = 'truncate' not in given and value is not None",
        '            inherited = value is not None',
    ),
    (A, 'return inputs.masked_fill(inputs == self.END_IDX, self.NULL_IDX)', 'return inputs'),
    (A, 'bow = bow_per_token.sum() / notnull.sum()', 'bow = bow_per_token.mean()'),
    (A, '        loss = nll + bow\n', '        loss = nll + 0.5 * bow\n'),
    (A, '        loss = nll + bow\n', '        loss = nll\n'),
    (
        A,
        'loss = loss + entropy_coef * negative_entropy_loss(out.posterior_logits)',
        'loss = loss - entropy_coef * negative_entropy_loss(out.posterior_logits)',
    ),
    (
        A,
        'marginal = torch.logsumexp(per_latent, dim=-1) - math.log(self.n_latent)',
        'marginal = torch.logsumexp(per_latent, dim=-1)',
    ),
    (
        A,
        'marginal = torch.logsumexp(per_latent, dim=-1) - math.log(self.n_latent)',
        'marginal = per_latent.max(dim=-1).values - math.log(self.n_latent)',
    ),
    (
        A,
        'per_latent = (token_ll * notnull).sum(dim=-1).view(-1, self.n_latent)',
        'per_latent = token_ll.sum(dim=-1).view(-1, self.n_latent)',
    ),
    (
        A,
        'n_tokens = (labels != self.NULL_IDX).sum(dim=-1)',
        'n_tokens = torch.full_like(labels[:, 0], labels.shape[1])',
    ),
    (
        A,
        # was ys[:, :-1] without END->NULL: equivalent here (the generation pass is causal,
        # an END left in a shorter row only feeds positions whose labels are padding)
        'inputs = model.response_inputs(labels)',
        'inputs = labels  # no START shift: each position sees its own label',
    ),
    (
        A,
        '[float(score) / max(1, len(tokens) - 1) for tokens, score, _ in cands]',
        '[float(score) / max(1, len(tokens)) for tokens, score, _ in cands]',
    ),
    (
        A,
        '[float(score) / max(1, len(tokens) - 1) for tokens, score, _ in cands]',
        '[float(score) for tokens, score, _ in cands]',
    ),
    (
        A,
        # re-matched: the word count is n_words (Knover style also drops END)
        'unfinished = n_words >= self._max_ts',
        'unfinished = n_words > self._max_ts',
    ),
    (
        A,
        # re-matched: the heuristic is chosen by --rerank-style (reason)
        'if unfinished or reason(self._v2t(tokens), turns, ids):',
        'if unfinished or reason(self._v2t(tokens), turns):',
    ),
    (
        A,
        # re-matched: the ranked items became (candidate, ...) pairs
        'ranked.sort(key=lambda pair: float(pair[0][1]), reverse=True)',
        'ranked.sort(key=lambda pair: float(pair[0][1]))',
    ),
    (A, "max_ts = min(max_ts, self.opt.get('max_dec_len') or max_ts)", 'max_ts = max_ts'),
    (A, "top_k = 1 if method == 'greedy' else self.opt['topk']", "top_k = self.opt['topk']"),
    (A, '            length_penalty=0.0,', '            length_penalty=0.65,'),
    (
        A,
        'latent_ids = copy_numbers(indices) % self.transformer.n_latent',
        'latent_ids = indices % self.transformer.n_latent',
    ),
    (
        A,
        'return torch.tril(same, diagonal=-1).sum(dim=1)',
        'return torch.tril(same, diagonal=0).sum(dim=1)',
    ),
    (
        A,
        "    if len(set(grams)) < len(grams):\n        return 'in-turn trigram repetition'",
        "    if False:\n        return 'in-turn trigram repetition'",
        0,  # repetition_reason (1 = knover_repetition_reason)
    ),
    (A, '    words = text.lower().split()', '    words = text.split()'),
    (A, '    if context_grams.intersection(grams):', '    if False:'),
    (E, '        loss = rce + mlm\n', '        loss = rce\n'),
    (E, '        loss = rce + mlm\n', '        loss = rce + 0.5 * mlm\n'),
    (E, '        targets = tokens[selected]', '        targets = inputs[selected]'),
    (
        E,
        'logits, mlm_logits = self.model(inputs[:, :split], inputs[:, split:], replaced, selected)',
        'logits, mlm_logits = self.model(tokens[:, :split], tokens[:, split:], replaced, selected)',
    ),
    (
        E,
        'logits, mlm_logits = self.model(inputs[:, :split], inputs[:, split:], replaced, selected)',
        'logits, mlm_logits = self.model(inputs[:, :split], inputs[:, split:], None, selected)',
    ),
    (
        E,
        'maskable = (tokens != self.NULL_IDX) & (tokens != self.START_IDX) & (tokens != self.END_IDX)',
        'maskable = tokens != self.NULL_IDX',
    ),
    (E, '        return max(specials) + 1', '        return 0'),
    (
        E,
        'scores.append(F.log_softmax(logits.float(), dim=-1)[:, 1])',
        'scores.append(F.softmax(logits.float(), dim=-1)[:, 1])',
    ),
    (
        E,
        'ctx_rows = [row[row != self.NULL_IDX][-text_truncate:] for row in contexts]',
        'ctx_rows = [row[row != self.NULL_IDX][:text_truncate] for row in contexts]',
    ),
    (
        E,
        'resp_rows = [row[row != self.NULL_IDX][:label_truncate] for row in responses]',
        'resp_rows = [row[row != self.NULL_IDX] for row in responses]',
    ),
    (
        B,
        'contexts = context.repeat_interleave(n_cands, dim=0)',
        'contexts = context.repeat(n_cands, 1)',
    ),
    (
        E,
        'context, response, labels = coherence_pairs(batch.text_vec, batch.label_vec)',
        'context, response, labels = coherence_pairs(batch.text_vec, batch.text_vec)',
    ),
    # P: PLATO-2 model: recognition from [M], BOW from z, Gumbel tau, NUP from [CLS]
    (P, '        tau: float = 0.67,', '        tau: float = 1.0,'),  # re-matched: one per line
    (
        P,
        # re-matched: the [M] input is mask_vector(self)
        'prefix = mask_vector(self).expand(context.shape[0], 1, -1)',
        'prefix = self.latent_embedding[:1].expand(context.shape[0], 1, -1)',
    ),
    # A: PLATO-2 agent: loss weights, marginal over z, rerank, truncation inheritance
    (
        A,
        "group.add_argument('--n-latent', type=int, default=20,",
        "group.add_argument('--n-latent', type=int, default=10,",
    ),
    (
        S,
        '    if unexpected or (missing and sorted(missing) != sorted(expected_fresh)):',
        '    if unexpected:',
        0,  # load_with_fresh (written before load_hf_with_fresh repeated the check)
    ),
    (A, "'--gumbel-tau', type=float, default=0.67,", "'--gumbel-tau', type=float, default=1.0,"),
    (
        A,
        "parser.set_defaults(inference='topk', topk=10, beam_min_length=1)",
        "parser.set_defaults(inference='topk', topk=5, beam_min_length=1)",
    ),
    (E, "'--mlm-prob', type=float, default=0.15,", "'--mlm-prob', type=float, default=0.2,"),
    (A, 'grams = list(zip(items, items[1:], items[2:]))', 'grams = list(zip(items, items[1:]))'),
    # L: PLATO-2 losses: BOW, coherence pairs, MLM masking, entropy
    (
        L,
        '        labels = torch.ones(batch, dtype=torch.long, device=context.device)\n        return',
        '        labels = torch.zeros(batch, dtype=torch.long, device=context.device)\n        return',
    ),
    # A: PLATO-2 agent: loss weights, marginal over z, rerank, truncation inheritance
    (
        A,
        "if self.ranking == 'random':\n            return [torch.rand(len(cands)).tolist() for cands in candidates]",
        "if self.ranking == 'random':\n            return [[0.0] * len(cands) for cands in candidates]",
    ),
    # A/P: the Knover-style rerank (--rerank-style knover) and the token [MASK] row (#18)
    (
        A,
        "    if len(set(grams)) < len(grams):\n        return 'in-turn trigram repetition'",
        "    if False:\n        return 'in-turn trigram repetition'",
        1,  # knover_repetition_reason
    ),
    (
        A,
        "    if not response.split():\n        return 'empty response'",
        "    if False:\n        return 'empty response'",
    ),
    (A, '    words = response.split()', '    words = response.lower().split()'),
    (A, 'n_words = len(tokens) - (2 if knover_style else 1)', 'n_words = len(tokens) - 1'),
    (A, '            max_ts += 1\n', '            max_ts += 0\n'),
    (
        P,
        'return model.embeddings.tokens.weight[model.mask_id]',
        'return model.embeddings.tokens.weight[model.mask_id - 1]',
    ),
]

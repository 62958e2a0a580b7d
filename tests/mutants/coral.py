"""Mutants of CORAL (reward model, losses, agents: the generator A, the reward agents R).

Converted from the CORAL engineer's hand-made lists (three rounds), issue #18. Run: .venv/bin/python tests/mutants/run.py --system coral
"""

M = 'parlai_ext/modules/coral.py'
L = 'parlai_ext/losses/coral.py'
A = 'parlai_ext/agents/coral.py'  # the CORAL generator
R = 'parlai_ext/agents/coral_reward.py'  # the reward-model agents
B = 'parlai_ext/agents/batching.py'  # (context, candidate) pairs of score_candidates

TESTS = ['tests/test_coral_math.py', 'tests/test_coral_agents.py', 'tests/test_coral.py']

MUTANTS = [
    # M: modules/coral.py
    (M, '(x * weights).sum(dim=1) / weights', 'x.sum(dim=1) / weights'),
    (M, 'weights.sum(dim=1).clamp(min=1.0)', 'weights.sum(dim=1)'),
    (
        M,
        'filled = x.masked_fill(~valid.unsqueeze(-1), NEG_FILL).max(dim=1).values',
        'filled = x.max(dim=1).values',
    ),
    (
        M,
        'return torch.where(valid.any(dim=1, keepdim=True), filled, torch.zeros_like(filled))',
        'return filled',
    ),
    (
        M,
        '            nn.Linear(hidden, hidden),\n            activation(),\n',
        '            nn.Linear(hidden, hidden),\n',
    ),
    (
        M,
        'lengths = valid.sum(dim=1).clamp(min=1).cpu()',
        'lengths = torch.full_like(valid.sum(dim=1), valid.shape[1]).cpu()',
    ),
    (
        M,
        'to_response = energy.masked_fill(~response_valid[:, None, :], NEG_FILL).softmax(dim=2)',
        'to_response = energy.softmax(dim=2)',
    ),
    (
        M,
        'to_context = energy.masked_fill(~context_valid[:, :, None], NEG_FILL).softmax(dim=1)',
        'to_context = energy.softmax(dim=1)',
    ),
    (M, 'NEG_FILL).softmax(dim=2)', 'NEG_FILL).softmax(dim=1)'),
    (
        M,
        'torch.cat([x, aligned, x - aligned, x * aligned], dim=-1)',
        'torch.cat([x, aligned, aligned - x, x * aligned], dim=-1)',
    ),
    (
        M,
        'torch.cat([x, aligned, x - aligned, x * aligned], dim=-1)',
        'torch.cat([x, aligned, x - aligned, x + aligned], dim=-1)',
    ),
    (
        M,
        'torch.cat([x, aligned, x - aligned, x * aligned], dim=-1)',
        'torch.cat([aligned, x, x - aligned, x * aligned], dim=-1)',
    ),
    (M, 'masked_max(v_r, response_valid),', 'masked_mean(v_r, response_valid),'),
    (M, 'masked_mean(v_c, context_valid),', 'v_c.mean(dim=1),'),
    (
        M,
        'c_tilde, r_tilde = self.cross_attend(c_bar, r_bar, context_valid, response_valid)',
        'r_tilde, c_tilde = self.cross_attend(r_bar, c_bar, response_valid, context_valid)',
    ),
    (
        M,
        '        self.classifier = nn.Sequential(\n            nn.Linear(8 * hidden_dim, hidden_dim),\n            nn.Tanh(),',
        '        self.classifier = nn.Sequential(\n            nn.Linear(8 * hidden_dim, hidden_dim),\n            nn.ReLU(),',
    ),
    (
        M,
        'self.projection = nn.Sequential(nn.Linear(8 * hidden_dim, hidden_dim), nn.ReLU())',
        'self.projection = nn.Sequential(nn.Linear(8 * hidden_dim, hidden_dim))',
    ),
    (M, 'resp = resp[: max(max_len - 3, 0)]', 'resp = resp[: max(max_len - 2, 0)]'),
    (
        M,
        'ctx = ctx[max(len(ctx) - (max_len - 3 - len(resp)), 0) :]',
        'ctx = ctx[: max_len - 3 - len(resp)]',
    ),
    (
        M,
        'ctx = ctx[max(len(ctx) - (max_len - 3 - len(resp)), 0) :]',
        'ctx = ctx[max(len(ctx) - (max_len - 2 - len(resp)), 0) :]',
    ),
    (
        M,
        'types.append(torch.cat([ctx.new_zeros(len(ctx) + 2), ctx.new_ones(len(resp) + 1)]))',
        'types.append(torch.cat([ctx.new_zeros(len(ctx) + 1), ctx.new_ones(len(resp) + 2)]))',
    ),
    (M, 'valid[i, : len(row)] = True', 'valid[i, : len(row) - 1] = True'),
    (M, 'valid[i, : len(row)] = True', 'valid[i, :] = True'),
    (
        M,
        "pooled = hidden[:, 0] if self.pooling == 'cls'",
        "pooled = hidden[:, 1] if self.pooling == 'cls'",
    ),
    (
        M,
        "pooled = hidden[:, 0] if self.pooling == 'cls'",
        "pooled = hidden[:, -1] if self.pooling == 'cls'",
    ),
    (M, 'else masked_mean(hidden, valid)', 'else hidden.mean(dim=1)'),
    (
        M,
        'rows.append(torch.cat([start, ctx, end, resp, end]))',
        'rows.append(torch.cat([start, resp, end, ctx, end]))',
    ),
    (M, 'return torch.sigmoid(logits.float())', 'return torch.sigmoid(-logits.float())'),
    (M, 'return torch.sigmoid(logits.float())', 'return torch.sigmoid(logits)'),
    (M, '        if step < min_len:', '        if step <= min_len:'),
    (M, "            logits[:, end_idx] = float('-inf')\n", '            pass\n'),
    (
        M,
        'chosen = nucleus_sample(logits, top_p, generator).masked_fill(done, pad_idx)',
        'chosen = nucleus_sample(logits, top_p, generator)',
    ),
    (
        M,
        'chosen = nucleus_sample(logits, top_p, generator)',
        'chosen = nucleus_sample(logits, 1.0, generator)',
    ),
    (M, 'chosen = nucleus_sample(logits, top_p, generator)', 'chosen = logits.argmax(dim=-1)'),
    (M, '        done = done | (chosen == end_idx)\n', ''),
    (
        M,
        'tokens = torch.cat([tokens, chosen[:, None]], dim=1)',
        'tokens = torch.cat([tokens, tokens[:, -1:]], dim=1)',
    ),
    (M, '    for step in range(max_len):', '    for step in range(max_len - 1):'),
    (M, '    for step in range(max_len):', '    for step in range(max_len + 1):'),
    # L: losses/coral.py
    (L, 'return scores - margin', 'return scores + margin'),
    (
        L,
        'return reward_weighted_nll(log_probs_per_token, mask, scores, margin, normalise)',
        'return reward_weighted_nll(log_probs_per_token, mask, scores, -margin, normalise)',
    ),
    (
        L,
        'return reward_weighted_nll(log_probs_per_token, mask, scores, margin, normalise)',
        "return reward_weighted_nll(log_probs_per_token, mask, scores, margin, 'token')",
    ),
    (
        L,
        'return reward_weighted_nll(log_probs_per_token, mask, scores, margin, normalise)',
        'return reward_weighted_nll(log_probs_per_token, torch.ones_like(mask), scores, margin, normalise)',
    ),
    (
        L,
        'return torch.rand(batch_size, generator=generator) < p_positive',
        'return torch.rand(batch_size, generator=generator) > p_positive',
    ),
    (
        L,
        'return torch.rand(batch_size, generator=generator) < p_positive',
        'return torch.rand(batch_size, generator=generator) < 1 - p_positive',
    ),
    (L, 'slot = self.random.randrange(self.seen)', 'slot = self.random.randrange(self.seen + 1)'),
    (L, 'slot = self.random.randrange(self.seen)', 'slot = self.random.randrange(self.capacity)'),
    (
        L,
        '            if len(self.items) < self.capacity:',
        '            if len(self.items) <= self.capacity:',
    ),
    (L, '                if candidate[0] != text:', '                if True:'),
    (
        L,
        'allowed = [it for it in self.items if it[0] != text] or self.items',
        'allowed = self.items',
    ),
    (
        L,
        'labels = torch.cat([torch.ones_like(positive_logits), torch.zeros_like(negative_logits)])',
        'labels = torch.cat([torch.zeros_like(positive_logits), torch.ones_like(negative_logits)])',
    ),
    (
        L,
        'return F.binary_cross_entropy_with_logits(logits, labels.float())',
        "return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction='sum')",
    ),
    (
        L,
        'return F.binary_cross_entropy_with_logits(logits, labels.float())',
        "return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction='sum') / len(positive_logits)",
    ),
    (L, '(below + 0.5 * (not_above - below))', '(below + 1.0 * (not_above - below))'),
    (L, '(below + 0.5 * (not_above - below))', '(below + 0.0 * (not_above - below))'),
    (L, '/ (len(pos) * len(neg))', '/ (len(pos) * len(pos))'),
    (
        L,
        "below = np.searchsorted(neg_sorted, pos, side='left')",
        "below = np.searchsorted(neg_sorted, pos, side='right')",
    ),
    # A / R: agents/coral.py, agents/coral_reward.py
    (R, '        return roc_auc(positive, negative)', '        return roc_auc(negative, positive)'),
    (
        R,
        'loss = retrieval_bce_loss(logits[:bsz], logits[bsz:])',
        'loss = retrieval_bce_loss(logits[bsz:], logits[:bsz])',
    ),
    (
        R,
        '        contexts = torch.cat([batch.text_vec, batch.text_vec])\n        logits = self.model(contexts, responses)',
        '        contexts = torch.cat([batch.text_vec, batch.text_vec.flip(0)])\n        logits = self.model(contexts, responses)',
    ),
    (
        R,
        'negatives = [vec for _, vec in self.pool.sample(batch.labels)]',
        "negatives = [vec for _, vec in self.pool.sample([''] * len(batch.labels))]",
    ),
    (
        R,
        'acc.append(AverageMetric((p > 0.5) + (n < 0.5), 2)',
        'acc.append(AverageMetric((p > 0.5) + (n > 0.5), 2)',
    ),
    (
        R,
        'bces.append(AverageMetric(pb + nb, 2) if ok else AverageMetric(pb, 1))',
        'bces.append(AverageMetric(pb + nb, 1) if ok else AverageMetric(pb, 1))',
    ),
    (
        R,
        'neg_scores.append(AverageMetric(n, 1) if ok else AverageMetric(0, 0))',
        'neg_scores.append(AverageMetric(p, 1) if ok else AverageMetric(0, 0))',
    ),
    (R, 'auc.append(AucMetric([p], [n] if ok else []))', 'auc.append(AucMetric([p], [n]))'),
    (
        R,
        'previous = [self._previous_eval_response] + list(zip(batch.labels, rows))[:-1]',
        'previous = list(zip(batch.labels, rows))[1:] + [self._previous_eval_response]',
    ),
    (
        R,
        'self._previous_eval_response = (batch.labels[-1], rows[-1])',
        'self._previous_eval_response = (batch.labels[0], rows[0])',
    ),
    (
        R,
        'has_negative = [p is not None and p[0] != text for p, text in zip(previous, batch.labels)]',
        'has_negative = [p is not None for p, text in zip(previous, batch.labels)]',
    ),
    (
        B,
        'contexts = context.repeat_interleave(n_cands, dim=0)',
        'contexts = context.repeat(n_cands, 1)',
    ),
    (
        R,
        '[self._vectorize_text(c, truncate=self.text_truncate) for c in contexts]',
        '[self._vectorize_text(c, truncate=self.label_truncate) for c in contexts]',
    ),
    (
        R,
        'self._vectorize_text(r, truncate=self.label_truncate, truncate_left=False)',
        'self._vectorize_text(r, truncate=self.label_truncate, truncate_left=True)',
    ),
    (R, "        kwargs['add_end'] = False", "        kwargs['add_end'] = True"),
    (
        R,
        '        return [row[row != self.NULL_IDX].cpu() for row in vec]',
        '        return [row.cpu() for row in vec]',
    ),
    (
        A,
        'return cap if wanted is None else min(wanted, cap)',
        'return cap if wanted is None else wanted',
    ),
    (
        A,
        'return cap if wanted is None else min(wanted, cap)',
        'return 60 if wanted is None else min(wanted, cap)',
    ),
    (
        A,
        '        self.model.eval()\n        try:\n            samples',
        '        try:\n            samples',
    ),
    (
        A,
        "                self.opt['negative_topp'],\n            )",
        '                1.0,\n            )',
    ),
    (
        A,
        "obs_batch[i].get('full_text', obs_batch[i].get('text', ''))",
        "obs_batch[i].get('text', '')",
    ),
    (
        A,
        "            or self._number_training_updates < self.opt['ce_warmup_updates']",
        "            or self._number_training_updates <= self.opt['ce_warmup_updates']",
    ),
    (
        A,
        "positive = choose_positives(len(texts), self.opt['p_positive'])",
        "positive = ~choose_positives(len(texts), self.opt['p_positive'])",
    ),
    (
        A,
        'negative_rows = (~positive).nonzero().flatten().tolist()',
        'negative_rows = positive.nonzero().flatten().tolist()',
    ),
    (A, '                texts[i], labels[i] = text, vec', '                texts[i] = text'),
    (A, '                texts[i], labels[i] = text, vec', '                labels[i] = vec'),
    (
        A,
        'scores = self.reward.score(batch.context_texts, texts).to(device)',
        'scores = self.reward.score(batch.context_texts, list(batch.labels)).to(device)',
    ),
    (
        A,
        'scores = self.reward.score(batch.context_texts, texts).to(device)',
        'scores = self.reward.score(batch.context_texts[::-1], texts[::-1]).to(device)',
    ),
    (
        A,
        'scores = self.reward.score(batch.context_texts, texts).to(device)',
        'scores = self.reward.score(batch.context_texts[1:] + batch.context_texts[:1], texts).to(device)',
    ),
    (
        A,
        "loss = coral_loss(log_probs, mask, scores, self.opt['margin'], self.opt['coral_normalise'])",
        "loss = coral_loss(log_probs, mask, scores, 0.0, self.opt['coral_normalise'])",
    ),
    (
        A,
        "loss = coral_loss(log_probs, mask, scores, self.opt['margin'], self.opt['coral_normalise'])",
        "loss = coral_loss(log_probs, mask, scores, self.opt['margin'], 'token')",
    ),
    (
        A,
        "loss = coral_loss(log_probs, mask, scores, self.opt['margin'], self.opt['coral_normalise'])",
        "loss = coral_loss(log_probs, mask, 1 - scores, self.opt['margin'], self.opt['coral_normalise'])",
    ),
    (
        A,
        'logits, *_ = self.model(*self._model_input(batch), ys=targets)',
        'logits, *_ = self.model(*self._model_input(batch), ys=batch.label_vec)',
    ),
    (
        A,
        'nll = (-(log_probs * mask).sum(dim=1)).tolist()',
        'nll = (-(log_probs * mask).mean(dim=1)).tolist()',
    ),
    (
        A,
        'AverageMetric(s, 1) if p else AverageMetric(0, 0)\n                for s, p in zip(scores.tolist(), is_pos)',
        'AverageMetric(s, 1) if not p else AverageMetric(0, 0)\n                for s, p in zip(scores.tolist(), is_pos)',
    ),
    (
        A,
        '[AverageMetric(n, 1) if p else AverageMetric(0, 0) for n, p in zip(nll, is_pos)]',
        '[AverageMetric(n, 1) for n, p in zip(nll, is_pos)]',
    ),
    (
        A,
        "self.record_local_metric('positive', AverageMetric.many([int(p) for p in is_pos]))",
        "self.record_local_metric('positive', AverageMetric.many([1 - int(p) for p in is_pos]))",
    ),
    (
        A,
        'scores = model.score(contexts, list(output.text))',
        'scores = model.score(contexts, list(batch.labels))',
    ),
    (
        A,
        "        if source == 'random' and self.opt['p_positive'] < 1.0:\n            self.pool.add(texts, labels)",
        "        if source == 'random' and self.opt['p_positive'] < 1.0:\n            self.pool.add(texts[::-1], labels)",
    ),
    (
        B,
        'return contexts, cand_vecs.reshape(bsz * n_cands, -1), bsz, n_cands',
        'return contexts, cand_vecs.transpose(0, 1).reshape(bsz * n_cands, -1), bsz, n_cands',
    ),
    (
        R,
        # re-matched: the class gained hf_glue.HfCheckpointMixin
        'class _RewardAgent(hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchRankerAgent):',
        'class _RewardAgent(hf_glue.HfCheckpointMixin, TorchRankerAgent):',
    ),
    # A / R: CORAL agents: Eq. 3 reward, mix policy, pairs, metrics
    (R, '        self.pool.add(batch.labels, positives)\n', ''),
    (
        R,
        'self._record_pairs(logits[:bsz], logits[bsz:], has_negative)',
        'self._record_pairs(logits[bsz:], logits[:bsz], has_negative)',
    ),
    (R, 'total._chunks = self._chunks + other._chunks', 'total._chunks = self._chunks'),
    (
        R,
        'return reward_probability(self._pair_logits(context, response)).cpu()',
        'return self._pair_logits(context, response).cpu()',
    ),
    (
        A,
        '            self.model.train(was_training)\n        out = []',
        '            self.model.train(True)\n        out = []',
    ),
    (
        A,
        "for name, model in (('r3', self.reward), ('maude', self.maude)):",
        "for name, model in (('r3', self.maude), ('maude', self.reward)):",
    ),
    (R, '        self.model.eval()\n        context = pad_rows(', '        context = pad_rows('),
    (
        A,
        '            tokens = tokens[tokens != self.NULL_IDX]  # the padding after the end token\n',
        '',
    ),
    (
        A,
        '                drawn = self.pool.sample([texts[i] for i in negative_rows])',
        '                drawn = self.pool.sample([texts[0] for i in negative_rows])',
    ),
    (
        R,
        # replaces a placeholder of the original list ('sub_unused', never found): the
        # negatives' BCE (a metric and the eval loss) must target label 0
        "neg_bce = bce(neg_logits.float(), torch.zeros_like(neg_logits), reduction='none')",
        "neg_bce = bce(neg_logits.float(), torch.ones_like(neg_logits), reduction='none')",
    ),
    # M: CORAL reward model and policy scoring
    (
        M,
        'filled = x.masked_fill(~valid.unsqueeze(-1), NEG_FILL)',
        'filled = x.masked_fill(~valid.unsqueeze(-1), -NEG_FILL)',
    ),
    (
        M,
        'out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])',
        'out, _ = pad_packed_sequence(out, batch_first=True)',
    ),
    (M, 'return self.layers(x).squeeze(-1)', 'return self.layers(x).sum(-1)'),
    (
        M,
        'self.head = MlpHead(encoder.hidden_size, mlp_hidden, dropout)',
        'self.head = MlpHead(encoder.hidden_size, mlp_hidden, dropout, nn.ReLU)',
    ),
    # L: CORAL losses, p+ draw, nucleus negatives, pool
    (
        L,
        '                slot = self.random.randrange(self.seen)\n                if slot < self.capacity:\n                    self.items[slot] = item',
        '                slot = self.random.randrange(self.capacity)\n                self.items[slot] = item',
    ),
    (
        L,
        'logits = torch.cat([positive_logits, negative_logits]).float()',
        'logits = torch.cat([negative_logits, positive_logits]).float()',
    ),
    (
        L,
        "not_above = np.searchsorted(neg_sorted, pos, side='right')",
        "not_above = np.searchsorted(neg_sorted, pos, side='left')",
    ),
    # A / R: CORAL agents: Eq. 3 reward, mix policy, pairs, metrics
    (
        A,
        "self.record_local_metric('train_reward', AverageMetric.many(scores.tolist()))",
        "self.record_local_metric('train_reward', AverageMetric.many((scores - self.opt['margin']).tolist()))",
    ),
    (
        A,
        'targets = pad_rows(rows, self.NULL_IDX).to(device)',
        'targets = pad_rows(rows[::-1], self.NULL_IDX).to(device)',
    ),
    (
        R,
        '        positives = self._rows(batch.label_vec)\n',
        '        positives = self._rows(batch.text_vec)\n',
    ),
    (
        R,
        'responses = pad_rows(positives + negatives, self.NULL_IDX)',
        'responses = pad_rows(negatives + positives, self.NULL_IDX)',
    ),
    # M: CORAL reward model and policy scoring
    (
        M,
        'energy = context @ response.transpose(1, 2)  # (N, Lc, Lr)',
        'energy = context @ response.transpose(1, 2) / context.shape[-1] ** 0.5',
    ),
    (
        M,
        'return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)',
        'return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=2.0)',
    ),
    # A / R: CORAL agents: Eq. 3 reward, mix policy, pairs, metrics
    (A, '        contexts = batch.context_texts\n', '        contexts = list(batch.labels)\n'),
    # M: CORAL reward model and policy scoring
    (
        M,
        'logits = model.output(hidden[:, -1:]).squeeze(1).float()',
        'logits = model.output(hidden[:, -1:]).squeeze(1).float() / 0.7',
    ),
    # A / R: CORAL agents: Eq. 3 reward, mix policy, pairs, metrics
    (A, '        cap = self.label_truncate\n', '        cap = self.text_truncate\n'),
    # M: CORAL reward model and policy scoring
    (
        M,
        '            context, response, self.pad, self.cls, self.sep, self.encoder.max_len\n',
        '            context, response, self.pad, self.cls, self.sep, None\n',
    ),
    # L: CORAL losses, p+ draw, nucleus negatives, pool
    (
        L,
        '    return torch.rand(batch_size, generator=generator) < p_positive',
        '    return torch.rand(batch_size, generator=generator) < p_positive * 0.9',
    ),
    # M: CORAL reward model and policy scoring
    (
        M,
        '        return self.classifier(pooled).squeeze(-1)',
        '        return self.classifier(pooled.detach()).squeeze(-1)',
    ),
]

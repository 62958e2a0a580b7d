"""Mutants of the shared sampling utility and the shared metrics module.

Converted from the multi-reference engineer's hand-made lists (two rounds), issue #18. Run: .venv/bin/python tests/mutants/run.py --system sampling_metrics
"""

S = 'parlai_ext/modules/sampling.py'
X = 'parlai_ext/metrics.py'

TESTS = {
    S: [
        'tests/test_sampling.py',
        'tests/test_multiref_data.py',
        '-k',
        'sampl or nucleus or chi or gumbel or top or temperature',
    ],
    X: [
        'tests/test_metrics.py',
        '-k',
        'not hook and not eval_model and not self_chat and not glove',
    ],
}

MUTANTS = [
    # S: shared sampling: top-k, nucleus, temperature, Gumbel
    (
        S,
        'return -torch.log(GUMBEL_EPS - torch.log(uniform + GUMBEL_EPS))',
        'return -torch.log(uniform + GUMBEL_EPS)',
    ),
    (
        S,
        'return -torch.log(GUMBEL_EPS - torch.log(uniform + GUMBEL_EPS))',
        'return torch.log(GUMBEL_EPS - torch.log(uniform + GUMBEL_EPS))',
    ),
    (
        S,
        'soft = F.softmax((logits + noise) / tau, dim=-1)',
        'soft = F.softmax(logits + noise, dim=-1)',
    ),
    (
        S,
        'soft = F.softmax((logits + noise) / tau, dim=-1)',
        'soft = F.softmax((logits + noise) * tau, dim=-1)',
    ),
    (
        S,
        'soft = F.softmax((logits + noise) / tau, dim=-1)',
        'soft = F.softmax((logits - noise) / tau, dim=-1)',
    ),
    (
        S,
        'soft = F.softmax((logits + noise) / tau, dim=-1)',
        'soft = F.softmax(logits / tau, dim=-1)',
    ),
    (S, 'return one_hot - soft.detach() + soft', 'return one_hot'),
    (S, 'return one_hot - soft.detach() + soft', 'return one_hot + soft.detach() - soft'),
    (
        S,
        "return logits.masked_fill(logits < kth, float('-inf'))",
        "return logits.masked_fill(logits <= kth, float('-inf'))",
    ),
    (
        S,
        'kth = logits.topk(k, dim=-1).values[..., -1:]',
        'kth = logits.topk(k, dim=-1).values[..., :1]',
    ),
    (
        S,
        'kth = logits.topk(k, dim=-1).values[..., -1:]',
        'kth = logits.topk(k, dim=-1).values[..., -1:].min()',
    ),
    (S, 'if k <= 0 or k >= logits.shape[-1]:', 'if k <= 1 or k >= logits.shape[-1]:'),
    (
        S,
        'drop_sorted = (probs.cumsum(dim=-1) - probs) >= p',
        'drop_sorted = (probs.cumsum(dim=-1) - probs) > p',
    ),
    (
        S,
        'drop_sorted = (probs.cumsum(dim=-1) - probs) >= p',
        'drop_sorted = probs.cumsum(dim=-1) >= p',
    ),
    (S, 'drop = drop_sorted.scatter(-1, order, drop_sorted)', 'drop = drop_sorted'),
    (
        S,
        'sorted_logits, order = logits.sort(dim=-1, descending=True)',
        'sorted_logits, order = logits.sort(dim=-1, descending=False)',
    ),
    (
        S,
        'n_kept = ((cumulative - sorted_probs) < p).sum(dim=-1, keepdim=True).clamp_min(1)',
        'n_kept = (cumulative < p).sum(dim=-1, keepdim=True).clamp_min(1)',
    ),
    (
        S,
        'n_kept = ((cumulative - sorted_probs) < p).sum(dim=-1, keepdim=True).clamp_min(1)',
        'n_kept = ((cumulative - sorted_probs) <= p).sum(dim=-1, keepdim=True).clamp_min(1)',
    ),
    (
        S,
        'position = torch.searchsorted(cumulative, uniform * kept_mass, right=True)',
        'position = torch.searchsorted(cumulative, uniform, right=True)',
    ),
    (
        S,
        'return order.gather(1, torch.minimum(position, n_kept - 1))[:, 0]',
        'return order.gather(1, position.clamp_max(probs.size(1) - 1))[:, 0]',
    ),
    (S, 'accepted = mass_above < p', 'accepted = mass_above <= p'),
    (S, 'accepted = mass_above < p', 'accepted = mass_above < p + 0.05'),
    (
        S,
        'mass_above = (row_probs * (row_probs > token_prob)).sum(dim=-1)',
        'mass_above = (row_probs * (row_probs >= token_prob)).sum(dim=-1)',
    ),
    (
        S,
        'token = torch.searchsorted(row_cumulative, uniform * row_cumulative[:, -1:], right=True)',
        'token = torch.searchsorted(row_cumulative, uniform, right=True)',
    ),
    (S, 'pending = pending[~accepted]', 'pending = pending[accepted]'),
    (
        S,
        'filtered = top_k_filter(logits / temperature, top_k)',
        'filtered = top_k_filter(logits, top_k)',
    ),
    (
        S,
        'filtered = top_k_filter(logits / temperature, top_k)',
        'filtered = top_k_filter(logits * temperature, top_k)',
    ),
    (S, 'filtered = top_k_filter(logits / temperature, top_k)', 'filtered = logits / temperature'),
    (
        S,
        '        return nucleus_sample(filtered, top_p, generator)',
        '        return nucleus_sample(logits, top_p, generator)',
    ),
    (
        S,
        '    if top_p < 1.0:\n        return nucleus',
        '    if top_p < 0.0:\n        return nucleus',
    ),
    (
        S,
        'draws = torch.multinomial(flat, 1, generator=generator)',
        'draws = flat.argmax(-1, keepdim=True)',
    ),
    # X: shared metrics: BLEU, ROUGE-L, distinct, embedding scores, ranking
    (
        X,
        'return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]',
        'return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n)]',
    ),
    (
        X,
        'return len(counts) / total if total else 0.0',
        'return len(counts) / (total + 1) if total else 0.0',
    ),
    (
        X,
        '        return float(len(self.counts()))',
        '        return float(sum(self.counts().values()))',
    ),
    (
        X,
        'matches.append(sum(min(c, max_ref[g]) for g, c in counts.items()))',
        'matches.append(sum(c for g, c in counts.items() if g in max_ref))',
    ),
    (
        X,
        '            max_ref |= Counter(ngrams(ref, n))',
        '            max_ref += Counter(ngrams(ref, n))',
    ),
    (X, 'key=lambda r: (abs(r - hyp_len), r)', 'key=lambda r: (abs(r - hyp_len), -r)'),
    (X, 'return math.exp(1 - ref_len / hyp_len)', 'return math.exp(1 - hyp_len / ref_len)'),
    (
        X,
        '    if hyp_len > ref_len:\n        return 1.0',
        '    if hyp_len < ref_len:\n        return 1.0',
    ),
    (
        X,
        'log_p = sum(math.log(stats.matches[n] / stats.totals[n]) for n in range(order)) / order',
        'log_p = sum(math.log(stats.matches[n] / stats.totals[n]) for n in range(order)) / MAX_BLEU_ORDER',
    ),
    (X, 'numerator = stats.matches[n] or epsilon', 'numerator = stats.matches[n] or 1'),
    (
        X,
        'log_p += math.log(numerator / max(1, stats.totals[n]))',
        'log_p += math.log(numerator / max(1, stats.totals[0]))',
    ),
    (X, '    if stats.matches[0] == 0:\n        return 0.0\n    log_p = 0.0', '    log_p = 0.0'),
    (
        X,
        'return _brevity_penalty(stats.hyp_len, stats.ref_len) * math.exp(log_p / order)',
        'return math.exp(log_p / order)',
    ),
    (X, 'return 2 * precision * recall / (precision + recall)', 'return precision'),
    (
        X,
        'return float(u @ v) / norm if norm > 0 else 0.0',
        'return float(u @ v) if norm > 0 else 0.0',
    ),
    (X, 'return np.where(np.abs(low) > high, low, high)', 'return high'),
    (X, 'return np.where(np.abs(low) > high, low, high)', 'return np.where(low < high, low, high)'),
    (X, 'return float(sims.max(axis=1).mean())', 'return float(sims.max(axis=0).mean())'),
    (X, 'return float(sims.max(axis=1).mean())', 'return float(sims.mean(axis=1).mean())'),
    (
        X,
        "'ext_emb_greedy': (_greedy(hyp, ref) + ref_to_hyp) / 2,",
        "'ext_emb_greedy': _greedy(hyp, ref),",
    ),
    (X, 'ref_to_hyp = _greedy(ref, hyp)', 'ref_to_hyp = _greedy(hyp, ref)'),
    (
        X,
        "'ext_emb_avg': _cosine(hyp.mean(axis=0), ref.mean(axis=0)),",
        "'ext_emb_avg': _cosine(hyp.max(axis=0), ref.mean(axis=0)),",
    ),
    (
        X,
        "'ext_emb_extrema': _cosine(_extrema(hyp), _extrema(ref)),",
        "'ext_emb_extrema': _cosine(_extrema(hyp), ref.mean(axis=0)),",
    ),
    (
        X,
        'out[name] = AverageMetric(max(scores[name] for scores in per_ref))',
        'out[name] = AverageMetric(min(scores[name] for scores in per_ref))',
    ),
    (
        X,
        'hyp_vectors = vectors.lookup(t for t in hyp if _is_word(t))',
        'hyp_vectors = vectors.lookup(hyp)',
    ),
    (
        X,
        'scores[name] = 1.0 / ranks[0] if ranks else 0.0',
        'scores[name] = 1.0 / ranks[-1] if ranks else 0.0',
    ),
    (
        X,
        'scores[name] = sum(precisions) / n_relevant if n_relevant else 0.0',
        'scores[name] = sum(precisions) / len(ranks) if ranks else 0.0',
    ),
    (X, 'hits = sum(1 for r in ranks if r <= k)', 'hits = sum(1 for r in ranks if r < k)'),
    (X, 'if norm in wanted and norm not in found:', 'if norm in wanted:'),
    (
        X,
        "out['ext_len'] = AverageMetric(len(hyp))",
        "out['ext_len'] = AverageMetric(len(prediction.split()))",
    ),
    (
        X,
        "out['ext_rouge_l'] = AverageMetric(max(rouge_l_f1(hyp, ref) for ref in refs))",
        "out['ext_rouge_l'] = AverageMetric(rouge_l_f1(hyp, refs[0]))",
    ),
    (
        X,
        'diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])',
        'diagonal, row[j] = row[j], diagonal + 1 if x == y else row[j - 1]',
    ),
    (
        X,
        'return _TOKEN.findall(text.lower().translate(_QUOTES))',
        'return _TOKEN.findall(text.translate(_QUOTES))',
    ),
    (X, '        log.parts.extend(theirs)', '        log.parts.extend(theirs[:1])'),
    (
        X,
        'return np.where(np.abs(low) > high, low, high)',
        'return np.where(np.abs(low) >= high, low, high)',
    ),
    (X, '        if self._stop != len(log.parts):', '        if False:'),
    (X, '        if stop < self.n_counted:', '        if False:'),
    (X, 'wanted = {normalize_answer(label) for label in labels}', 'wanted = set(labels)'),
    (
        X,
        'log_p += math.log(numerator / max(1, stats.totals[n]))',
        'log_p += math.log(numerator / stats.totals[n])',
    ),
    (
        X,
        'return _TOKEN.findall(text.lower().translate(_QUOTES))',
        'return _TOKEN.findall(text.lower())',
    ),
    (
        X,
        'for ref_vectors in (vectors.lookup(t for t in ref if _is_word(t)) for ref in refs)',
        'for ref_vectors in (vectors.lookup(ref) for ref in refs)',
    ),
    (X, '            if len(ref_vectors)\n', '            if True\n'),
    (
        X,
        'return len(counts) / total if total else 0.0',
        'return len(counts) / total if total else 1.0',
    ),
    (X, '            grams = ngrams(hyp, n)', '            grams = ngrams(hyp, 1)'),
    (X, 'ref_len = min((len(r) for r in refs), key=', 'ref_len = max((len(r) for r in refs), key='),
    (
        X,
        'precision, recall = lcs / len(hyp), lcs / len(ref)',
        'precision, recall = lcs / len(ref), lcs / len(ref)',
    ),
    (
        X,
        "            scores[name] = float(hits > 0) if at_k.group(1) == 'hits' else hits / k",
        "            scores[name] = float(hits > 0) if at_k.group(1) == 'hits' else hits / len(ranks)",
    ),
    (
        X,
        'precisions = [i / r for i, r in enumerate(ranks, 1)]',
        'precisions = [1 / r for i, r in enumerate(ranks, 1)]',
    ),
    (
        X,
        'if any(stats.matches[n] == 0 or stats.totals[n] == 0 for n in range(order)):',
        'if any(stats.matches[n] == 0 for n in range(1, order)):',
    ),
    (
        X,
        '        return 1.0\n    if hyp_len == 0:\n        return 0.0',
        '        return 1.0\n    if hyp_len == 0:\n        return 1.0',
    ),
]

"""Mutants of the multi-reference systems (VHRED and its priors, losses, agent).

Converted from the multi-reference engineer's hand-made lists (two rounds), issue #18. Run: .venv/bin/python tests/mutants/run.py --system multiref
"""

M = 'parlai_ext/modules/vhred.py'
LT = 'parlai_ext/modules/vhred_latent.py'
G = 'parlai_ext/modules/hred_gru.py'
L = 'parlai_ext/losses/multiref.py'
A = 'parlai_ext/agents/vhred.py'

T_MR = ['tests/test_multiref_math.py', 'tests/test_multiref_agent.py', 'tests/test_vhred.py']
TESTS = {
    M: [*T_MR, 'tests/test_hred_gru.py', '-k', 'not cli'],
    LT: [*T_MR, '-k', 'not cli'],
    G: [*T_MR, 'tests/test_hred_gru.py', '-k', 'not cli'],
    L: [*T_MR, '-k', 'not cli'],
    A: [*T_MR, 'tests/test_multiref_data.py', '-k', 'not cli and not resume and not any_generator'],
}


def variants(path: str, old: str, *news: str) -> list[tuple[str, str, str]]:
    """One mutant per replacement of the same text ``old`` (in the order given)."""
    return [(path, old, new) for new in news]


MUTANTS = [
    # M: VHRED/multi-ref model: encoders, Gaussian/GMM/LGM priors, KL, attention
    (
        M,
        'states = outputs.view(n, max_len, 2, self.hidden).mean(dim=2)',
        'states = outputs.view(n, max_len, 2, self.hidden).sum(dim=2)',
    ),
    *variants(
        M,
        'encodings = final.view(self.n_layers, 2, n, self.hidden)[-1].mean(dim=0)',
        'encodings = final.view(self.n_layers, 2, n, self.hidden)[-1][0]',
        'encodings = final.view(self.n_layers, 2, n, self.hidden)[0].mean(dim=0)',
    ),
    # re-matched: the GRUs run over padded rows instead of packed sequences (#23)
    (
        M,
        'padded_bidirectional_gru(self.rnn, embedded, lengths.clamp_min(1))',
        'padded_bidirectional_gru(self.rnn, embedded, torch.full_like(lengths, max_len))',
    ),
    (
        M,
        'last = (n_utts.clamp_min(1) - 1)[:, None, None]',
        'last = (torch.full_like(n_utts, inputs.size(1)) - 1)[:, None, None]',
    ),
    (M, 'return outputs.gather(1, last).squeeze(1)', 'return outputs[:, 0]'),
    (
        M,
        'torch.cat([utterances, self.floor_embedding(floors)], dim=-1)',
        'torch.cat([utterances, self.floor_embedding(1 - floors)], dim=-1)',
    ),
    *variants(
        LT,
        'return self.mu + self.var.sqrt() * torch.randn_like(self.mu)',
        'return self.mu + self.var * torch.randn_like(self.mu)',
        'return self.mu.detach() + self.var.sqrt() * torch.randn_like(self.mu)',
        'return self.mu + self.var.sqrt().detach() * torch.randn_like(self.mu)',
        'return self.mu + self.var.sqrt() * torch.rand_like(self.mu)',
    ),
    (LT, 'h = torch.tanh(self.hidden(x))', 'h = torch.relu(self.hidden(x))'),
    *variants(
        LT,
        'var = F.softplus(self.var(h)).view(shape) + VAR_FLOOR',
        'var = torch.exp(self.var(h)).view(shape) + VAR_FLOOR',
        'var = F.softplus(self.var(h)).view(shape)',
    ),
    *variants(
        LT,
        'pi = torch.softmax(self.pi(h), dim=-1)',
        'pi = torch.sigmoid(self.pi(h))',
        'pi = torch.softmax(self.pi(h), dim=0)',
    ),
    *variants(
        LT,
        'torch.cat([response, context], dim=-1)',
        'torch.cat([context, response], dim=-1)',
        'torch.cat([response.detach(), context], dim=-1)',
    ),
    (
        LT,
        'return gaussian_kl(posterior.mu, posterior.var, params.mu[:, 0], params.var[:, 0])',
        'return gaussian_kl(params.mu[:, 0], params.var[:, 0], posterior.mu, posterior.var)',
    ),
    (LT, 'k = torch.multinomial(pi, 1)  # [B, 1]', 'k = pi.argmax(-1, keepdim=True)'),
    (LT, 'var = params.var.gather(1, index)[:, 0]', 'var = params.var[:, 0]'),
    (LT, 'mu = params.mu.gather(1, index)[:, 0]', 'mu = params.mu[:, 0]'),
    (
        LT,
        'return (params.pi.unsqueeze(-1) * params.mu).sum(dim=1)',
        'return params.mu.mean(dim=1)',
        0,
    ),
    (
        LT,
        'return (params.pi.unsqueeze(-1) * params.mu).sum(dim=1)',
        'return params.mu.mean(dim=1)',
        1,
    ),
    (LT, 'return gmm_kl_mc(z, posterior.mu,', 'return gmm_kl_mc(posterior.mu, posterior.mu,'),
    (
        LT,
        'z_k = params.mu + params.var.sqrt() * torch.randn_like(params.mu)',
        'z_k = params.mu + params.var * torch.randn_like(params.mu)',
    ),
    *variants(
        LT,
        'return (pi.unsqueeze(-1) * z_k).sum(dim=1)',
        'return z_k.mean(dim=1)',
        'return (pi.detach().unsqueeze(-1) * z_k).sum(dim=1)',
    ),
    (
        LT,
        '        pi = _forced(params.pi, component)\n        z_k',
        '        pi = params.pi\n        z_k',
    ),
    (LT, 'params.var, self.kl_mode)', "params.var, 'exact')"),
    (
        LT,
        'return LGMPrior(hidden, latent, config.n_components, config.lgm_kl)',
        'return LGMPrior(hidden, latent, config.n_components)',
    ),
    (
        LT,
        'F.one_hot(torch.full_like(pi[:, 0], component, dtype=torch.long)',
        'F.one_hot(torch.full_like(pi[:, 0], 0, dtype=torch.long)',
    ),
    (
        M,
        'scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)',
        'scores = scores',
    ),
    (
        M,
        'attended = torch.bmm(torch.softmax(scores, dim=-1), memory)',
        'attended = torch.bmm(torch.softmax(scores, dim=1), memory)',
    ),
    *variants(
        M,
        'return torch.tanh(self.combine(torch.cat([attended, query], dim=-1)))',
        'return self.combine(torch.cat([attended, query], dim=-1))',
        'return torch.tanh(self.combine(torch.cat([attended, attended], dim=-1)))',
    ),
    (M, 'state = torch.tanh(self.init_state(dec_context))', 'state = self.init_state(dec_context)'),
    (
        M,
        '            state = self.initial_state(dec_context)',
        '            state = torch.zeros_like(self.initial_state(dec_context))',
    ),
    (
        M,
        'unidirectional_gru(self.rnn, embedded, state, constant=dec_context)',
        'unidirectional_gru(self.rnn, embedded, state, constant=dec_context * 0)',
    ),
    (
        M,
        'return self.to_embedding(self.dropout(attended)), state',
        'return self.to_embedding(self.dropout(outputs)), state',
    ),
    (
        M,
        'mask = utts.ne(pad) & present.unsqueeze(-1)',
        'mask = present.unsqueeze(-1).expand_as(utts)',
    ),
    (
        M,
        'lengths = utts.ne(pad).sum(dim=-1)',
        'lengths = utts.ne(pad).sum(dim=-1).clamp_min(length)',
    ),
    (
        M,
        '_, encoding = self.utterance_encoder(ys, ys.ne(self.config.padding_idx).sum(dim=-1))',
        '_, encoding = self.utterance_encoder(ys, torch.full_like(ys[:, 0], ys.size(1)))',
    ),
    *variants(
        M,
        'inputs = context if z is None else torch.cat([context, z], dim=-1)',
        'inputs = context if z is None else torch.cat([context, z.detach()], dim=-1)',
        'inputs = context if z is None else torch.cat([context, z * 0], dim=-1)',
    ),
    (
        M,
        "            if z_source == 'posterior':\n                z = z_post",
        "            if z_source == 'posterior':\n                z = self.prior.mean(params)",
    ),
    (
        M,
        'kl = self.prior.kl(posterior, z_post, params)',
        'kl = self.prior.kl(posterior, self.prior.sample(params), params)',
    ),
    *variants(
        M,
        'bow_logits = self.bow(torch.cat([encoded.context, z], dim=-1))',
        'bow_logits = self.bow(torch.cat([encoded.context, z_post], dim=-1))',
        'bow_logits = self.bow(torch.cat([encoded.context, z.detach()], dim=-1))',
    ),
    (
        M,
        'return F.linear(features, self.embedding.weight, self.output_bias)',
        'return F.linear(features, self.embedding.weight)',
    ),
    (
        M,
        "        if mode == 'mean':\n            if component",
        "        if mode != 'mean':\n            if component",
    ),
    (
        M,
        '                params = params._replace(pi=_forced(params.pi, component))',
        '                pass',
    ),
    (
        M,
        "            elif z_source == 'prior':\n                z = self.prior.sample(params)",
        "            elif z_source == 'prior':\n                z = self.prior.mean(params)",
    ),
    (
        M,
        'context = self.context_encoder(self.dropout(utterance_encodings), floors, n_utts)',
        'context = self.context_encoder(self.dropout(utterance_encodings), floors * 0, n_utts)',
    ),
    (
        M,
        'mixed = self.query(query).unsqueeze(2) + self.key(memory).unsqueeze(1)',
        'mixed = self.query(query).unsqueeze(2) + memory.unsqueeze(1)',
    ),
    (
        M,
        'scores = self.emit(torch.tanh(mixed)).squeeze(-1)',
        'scores = self.emit(mixed).squeeze(-1)',
    ),
    (
        M,
        'scores = torch.bmm(self.query(query), memory.transpose(1, 2))',
        'scores = torch.bmm(query, memory.transpose(1, 2))',
    ),
    (
        M,
        'present = torch.arange(n_max, device=utts.device).unsqueeze(0) < n_utts.unsqueeze(1)',
        'present = torch.arange(n_max, device=utts.device).unsqueeze(0) <= n_utts.unsqueeze(1)',
    ),
    (
        M,
        'word_states.view(batch, n_max * length, hidden), mask.view(batch, -1), context',
        'word_states.view(batch, n_max * length, hidden), mask.view(batch, -1), utterance_encodings[:, 0]',
    ),
    (
        M,
        'return state.transpose(0, 1).contiguous()',
        'return state.reshape(self.n_layers, batch, self.hidden)',
    ),
    # L: multi-reference losses
    (
        L,
        'terms = torch.log(var_p) - torch.log(var_q) + (var_q',
        'terms = torch.log(var_q) - torch.log(var_p) + (var_q',
    ),
    *variants(
        L,
        '(var_q + (mu_q - mu_p) ** 2) / var_p - 1.0',
        '(var_q + (mu_q - mu_p) ** 2) / var_q - 1.0',
        '(var_q + (mu_q - mu_p) ** 2) / var_p + 1.0',
        '(var_p + (mu_q - mu_p) ** 2) / var_p - 1.0',
        '(var_q + (mu_q - mu_p)) / var_p - 1.0',
    ),
    *variants(
        L,
        'return 0.5 * terms.sum(dim=-1)',
        'return terms.sum(dim=-1)',
        'return 0.5 * terms.mean(dim=-1)',
    ),
    *variants(
        L,
        'return -0.5 * (LOG_2PI + torch.log(var) + (z - mu) ** 2 / var).sum(dim=-1)',
        'return -0.5 * (torch.log(var) + (z - mu) ** 2 / var).sum(dim=-1)',
        'return -0.5 * (LOG_2PI + torch.log(var) + (z - mu) ** 2 / var.sqrt()).sum(dim=-1)',
        'return -0.5 * (LOG_2PI - torch.log(var) + (z - mu) ** 2 / var).sum(dim=-1)',
    ),
    *variants(
        L,
        'return torch.logsumexp(torch.log(pi.clamp_min(1e-30)) + component, dim=-1)',
        'return torch.logsumexp(component, dim=-1)',
        'return (torch.log(pi.clamp_min(1e-30)) + component).max(dim=-1).values',
    ),
    *variants(
        L,
        'return gaussian_log_prob(z, mu_q, var_q) - gmm_log_prob(z, pi, mu, var)',
        'return gmm_log_prob(z, pi, mu, var) - gaussian_log_prob(z, mu_q, var_q)',
        'return gaussian_log_prob(z.detach(), mu_q, var_q) - gmm_log_prob(z.detach(), pi, mu, var)',
    ),
    (L, 'variance = (weights**2 * var).sum(dim=-2)', 'variance = (weights * var).sum(dim=-2)'),
    (
        L,
        '        variance = (weights * var).sum(dim=-2)',
        '        variance = (weights**2 * var).sum(dim=-2)',
    ),
    (L, 'mean = (weights * mu).sum(dim=-2)', 'mean = mu.mean(dim=-2)'),
    (
        L,
        'return gaussian_kl(mu_q, var_q, mean, variance)',
        'return gaussian_kl(mean, variance, mu_q, var_q)',
    ),
    *variants(
        L,
        'return min(1.0, max(step, 0) / anneal_steps)',
        'return min(1.0, max(step - 1, 0) / anneal_steps)',
        'return max(step, 0) / anneal_steps',
    ),
    (
        L,
        '    if anneal_steps <= 0:\n        return 1.0',
        '    if anneal_steps <= 0:\n        return 0.0',
    ),
    *variants(
        L,
        'return -(picked * targets.ne(pad_idx)).sum(dim=-1)',
        'return -(picked).sum(dim=-1)',
        'return -(picked * targets.ne(pad_idx)).mean(dim=-1)',
        'return (picked * targets.ne(pad_idx)).sum(dim=-1)',
    ),
    (
        L,
        'log_probs = F.log_softmax(bow_logits.float(), dim=-1)',
        'log_probs = F.log_softmax(bow_logits.float(), dim=0)',
    ),
    (L, "        ignore_index=pad_idx,\n        reduction='none',", "        reduction='none',"),
    *variants(
        L,
        '        total = total + kl_weight * kl',
        '        total = total + kl',
        '        total = total - kl_weight * kl',
    ),
    *variants(
        L,
        '        total = total + bow_weight * bow',
        '        total = total + bow',
        '        total = total',
    ),
    (L, '    return total.mean()', '    return total.sum()'),
    # A: VHRED agent: ELBO, KL annealing, metrics, context splitting
    (
        A,
        'return kl_anneal_weight(self._number_training_updates + 1,',
        'return kl_anneal_weight(self._number_training_updates,',
    ),
    *variants(
        A,
        "loss = elbo_loss(nll_post, kl, kl_weight, bow, self.opt['bow_weight'])",
        "loss = elbo_loss(nll_tok.sum(dim=-1), kl, kl_weight, bow, self.opt['bow_weight'])",
        'loss = elbo_loss(nll_post, kl, kl_weight, bow, 1.0)',
    ),
    (A, 'kl_weight = self.kl_weight() if training else 1.0', 'kl_weight = self.kl_weight()'),
    (
        A,
        "source = 'prior_mean' if self.opt.get('test_z') == 'mean' else 'prior'",
        "source = 'prior' if self.opt.get('test_z') == 'mean' else 'prior_mean'",
    ),
    # re-matched: the prior evaluation became a named flag
    (A, 'evaluate_prior = self.latent and not training', 'evaluate_prior = False'),
    (A, 'bound = nll_post if kl is None else nll_post + kl', 'bound = nll_post'),
    *variants(
        A,
        'floors = (n_utts[:, None] - 1 - index[None, :]) % 2 * present',
        'floors = (n_utts[:, None] - index[None, :]) % 2 * present',
        'floors = (n_utts[:, None] - 1 - index[None, :]) % 2',
    ),
    (A, 'start = (b * n_max + i) * length', 'start = (i * len(contexts) + b) * length'),
    (
        A,
        'return utterances[-self.max_context_utts :] if',
        'return utterances[: self.max_context_utts] if',
    ),
    (A, 'self.dict.txt2vec(u)[: self.max_utt_len]', 'self.dict.txt2vec(u)[: self.max_utt_len + 1]'),
    # re-matched: the START ban is now fused into the output layer's bias (speed-ups, #23)
    (
        A,
        'banned_bias(len(dictionary), (self.START_IDX, self.NULL_IDX))',
        'banned_bias(len(dictionary), (self.NULL_IDX,))',
    ),
    *variants(
        A,
        'z = self.net.prior_sample(encoded.context, self.test_z, self.component)',
        "z = self.net.prior_sample(encoded.context, 'sample', self.component)",
        'z = self.net.prior_sample(encoded.context, self.test_z)',
    ),
    (A, 'return incr_state.index_select(1, inds)', 'return incr_state'),
    (A, '            tokens = tokens[:, -1:]', '            tokens = tokens'),
    (
        A,
        "self.record_local_metric('post_ppl', PPLMetric.many(nll_post, n_tokens))",
        "self.record_local_metric('post_ppl', PPLMetric.many(nll_tok.sum(-1), n_tokens))",
    ),
    (
        A,
        "self.record_local_metric('loss', AverageMetric.from_mask(nll_tok, notnull))",
        "self.record_local_metric('loss', AverageMetric.from_mask(nll_post_tok, notnull))",
    ),
    (
        A,
        'bow = bow_loss(post.bow_logits, ys, self.NULL_IDX)',
        'bow = bow_loss(post.bow_logits, batch.text_vec, self.NULL_IDX)',
    ),
    (
        A,
        'utterances += [u for u in turn.split(history.delimiter) if u.strip()]',
        'utterances += [u for u in turn.split(history.delimiter)]',
    ),
    (
        A,
        "self.record_local_metric('kl', AverageMetric.many(kl))",
        "self.record_local_metric('kl', AverageMetric.many(kl * kl_weight))",
    ),
    (
        A,
        "self.record_local_metric('elbo_ppl', PPLMetric.many(bound, n_tokens))",
        "self.record_local_metric('elbo_ppl', PPLMetric.many(nll_post, n_tokens))",
    ),
    (
        A,
        "self.record_local_metric('ppl', PPLMetric.from_mask(nll_tok, notnull))",
        "self.record_local_metric('ppl', PPLMetric.from_mask(nll_post_tok, notnull))",
    ),
    (
        A,
        'decoder_input = self._get_initial_forced_decoder_input(ys.size(0), ys[:, :-1])',
        'decoder_input = ys',
    ),
    (A, "            metrics_dict['loss'] = metrics_dict['elbo_loss']", '            pass'),
    # M: the bidirectional GRU over padded rows (#23)
    (
        G,
        'source = lengths[:, None] - 1 - steps[None, :]',
        'source = lengths[:, None] - steps[None, :]',
    ),
    (
        G,
        'last = (lengths - 1)[:, None, None]',
        'last = (lengths - 2).clamp_min(0)[:, None, None]',
    ),
    (
        G,
        'inputs = torch.cat(directions, dim=-1) * valid[..., None]',
        'inputs = torch.cat(directions, dim=-1)',
    ),
    (
        G,
        '            if suffix:\n                out = out.gather(1, reverse[..., None].expand_as(out))',
        '            pass',
    ),
    (
        G,
        "GRU_PARAMS = ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')",
        "GRU_PARAMS = ('weight_hh', 'weight_ih', 'bias_ih', 'bias_hh')",
    ),
    (
        G,
        'h0 = inputs.new_zeros(1, n, rnn.hidden_size)',
        'h0 = inputs.new_ones(1, n, rnn.hidden_size)',
    ),
    # G: the fused CPU GRU loop, its hand-written backward and the packed layout (#23)
    (G, 'rz.sigmoid_()', 'rz.tanh_()'),
    (
        G,
        'new = new.add_(b_in[:, :size] if per_row else b_in).tanh_()',
        'new = new.tanh_()',
    ),
    (
        G,
        'h = torch.lerp(new, h, update, out=out[:, start:end])',
        'h = torch.lerp(h, new, update, out=out[:, start:end])',
    ),
    (
        G,
        '[b_ih[..., :h2] + b_hh[:, None, :h2], b_hh[:, None, h2:]',
        '[b_hh[:, None, :h2].expand_as(b_ih[..., :h2]), b_hh[:, None, h2:]',
    ),
    (
        G,
        'torch.addcmul(keep, keep, new * new, value=-1, out=d_new[:, start:end])',
        'torch.addcmul(keep, keep, new * new, value=1, out=d_new[:, start:end])',
    ),
    (
        G,
        'torch.mul(h - new, slopes[..., hidden:], out=d_update[:, start:end])',
        'torch.mul(new - h, slopes[..., hidden:], out=d_update[:, start:end])',
    ),
    (
        G,
        'torch.mul(gh_n, slopes[..., :hidden], out=d_reset[:, start:end])',
        'torch.mul(gh_n, slopes[..., hidden:], out=d_reset[:, start:end])',
    ),
    (
        G,
        'carry = torch.baddbmm(dh * z_all[:, start:end], grad_gates[:, start:end], w_hh)',
        'carry = torch.baddbmm(dh * r_all[:, start:end], grad_gates[:, start:end], w_hh)',
    ),
    (G, 'dh[:, : carry.shape[1]] += carry', 'pass'),
    (
        G,
        'grads[4] = per_row.index_add_(1, row, torch.cat([flat_rz, grad_new], dim=-1))',
        'grads[4] = per_row.index_add_(1, row, torch.cat([flat_rz, grad_new], dim=-1)) / 2',
    ),
    (
        G,
        'b_ih.unsqueeze(1), constant.unsqueeze(0), w_ih[:, :, split:].transpose(1, 2)',
        'torch.zeros_like(b_ih).unsqueeze(1), constant.unsqueeze(0), w_ih[:, :, split:].transpose(1, 2)',
    ),
    (
        G,
        'torch.mul(dn, r_all[:, start:end], out=grad_hn[:, start:end])',
        'torch.mul(dh, r_all[:, start:end], out=grad_hn[:, start:end])',
    ),
    (
        G,
        'grads[4] = torch.cat([grad_bias_h[:, :h2], grad_new.sum(dim=1)], dim=-1)',
        'grads[4] = grad_bias_h',
    ),
    (
        G,
        'out[:, start : start + size] for start, size in zip(starts, batch_sizes[1:])',
        'out[:, start : start + size] for start, size in zip(starts[1:], batch_sizes[1:])',
    ),
    (
        G,
        'sorted_lengths, order = lengths.sort(descending=True, stable=True)',
        'sorted_lengths, order = lengths.sort(descending=False, stable=True)',
    ),
    (
        G,
        'backward = (start_of_row + sorted_lengths[None, :] - 1 - steps[:, None])[running]',
        'backward = (start_of_row + steps[:, None])[running]',
    ),
    (G, 'last = starts[lengths - 1] + rank', 'last = starts[lengths - 1] + order'),
    (
        G,
        'target = torch.cat([forward * 2, backward * 2 + 1])',
        'target = torch.cat([forward * 2, forward * 2 + 1])',
    ),
    # M: the response encoded in the context's utterance-encoder call (#23)
    (
        M,
        'row_lengths = torch.cat([row_lengths, ys.ne(pad).sum(dim=-1)])',
        'row_lengths = torch.cat([row_lengths, torch.full_like(ys[:, 0], ys.size(1))])',
    ),
    (
        M,
        'response = encodings[n_rows:] if ys is not None else None',
        'response = encodings[: ys.size(0)] if ys is not None else None',
    ),
]

"""Mutants of PPG (persona layouts, BM25, critic pairs, samplers, REINFORCE, joint RL, teachers).

Converted from the PPG engineer's hand-made list, issue #18. Run: .venv/bin/python tests/mutants/run.py --system ppg
"""

M = 'parlai_ext/modules/ppg.py'
L = 'parlai_ext/losses/ppg.py'
A = 'parlai_ext/agents/ppg.py'
R = 'parlai_ext/agents/ppg_rl.py'
T = 'tasks/ppg/agents.py'

D, MO, AG = 'tests/test_ppg_data.py', 'tests/test_ppg_models.py', 'tests/test_ppg_agents.py'
# per file: the union of the selections the PPG engineer ran (slow checkpoint/cold-start CLI left out)
TESTS = {
    M: [D, MO, AG, '-k', 'not (checkpoints or cold_start)'],
    L: [MO, AG, '-k', 'reinforce or rewards or rl_step or gradient or rl_'],
    R: [AG, '-k', 'rl_ or memoised'],
    A: [MO, AG, '-k', 'critic or not (rl_ or checkpoints or cold_start)'],
    T: [D],
}

MUTANTS = [
    # M: modules/ppg.py: layouts
    (
        M,
        "return ' '.join(s.strip() for s in sentences if s.strip())",
        "return ''.join(s.strip() for s in sentences if s.strip())",
    ),
    (
        M,
        "return '\\n'.join([*context, f'{SELF_PREFIX} {persona_text(self_persona)}'])",
        "return '\\n'.join([f'{SELF_PREFIX} {persona_text(self_persona)}', *context])",
    ),
    (
        M,
        "lines = [*context, f'{SELF_PREFIX} {persona_text(self_persona)}']",
        "lines = [f'{SELF_PREFIX} {persona_text(self_persona)}', *context]",
    ),
    (M, 'if partner_persona is not None:', 'if partner_persona:'),
    (M, "lines.append(f'{PARTNER_PREFIX} {partner_persona}')", 'pass'),
    # M: BM25
    (
        M,
        'idf = math.log(1 + (n_docs - doc_freq[term] + 0.5) / (doc_freq[term] + 0.5))',
        'idf = math.log((n_docs - doc_freq[term] + 0.5) / (doc_freq[term] + 0.5))',
    ),
    (
        M,
        'score += idf * tf[term] * (k1 + 1) / (tf[term] + norm)',
        'score += idf * tf[term] * k1 / (tf[term] + norm)',
    ),
    (M, 'norm = k1 * (1 - b + b * len(doc) / avg_len)', 'norm = k1'),
    (
        M,
        'score += idf * tf[term] * (k1 + 1) / (tf[term] + norm)',
        'score += tf[term] * (k1 + 1) / (tf[term] + norm)',
    ),
    (M, 'key=lambda i: (-scores[i], i)', 'key=lambda i: (scores[i], i)'),
    (
        M,
        'keep = sorted(bm25_top_k(query, partner_persona, top_k))',
        'keep = bm25_top_k(query, partner_persona, top_k)',
    ),
    # M: critic pairs, dedup
    (
        M,
        'pairs += [CriticPair(own, response, 1), CriticPair(other, response, 0)]',
        'pairs += [CriticPair(own, response, 0), CriticPair(other, response, 1)]',
    ),
    (
        M,
        'for response, own, other in ((r_b, s_b, s_a), (r_a, s_a, s_b)):',
        'for response, own, other in ((r_b, s_a, s_b), (r_a, s_b, s_a)):',
    ),
    (M, 'if response.strip() == SILENCE or not response.strip()', 'if not response.strip()'),
    (
        M,
        'pairs += [CriticPair(other, response, 1), CriticPair(own, response, 0)]',
        'pairs += [CriticPair(own, response, 1), CriticPair(other, response, 0)]',
    ),
    (
        M,
        'for persona, response in ((s_b, r_b), (s_a, r_a)):',
        'for persona, response in ((s_a, r_b), (s_b, r_a)):',
    ),
    (M, 'if abs(len(own) - len(other)) <= 1 and', 'if abs(len(own) - len(other)) <= 2 and'),
    (M, '                if len(own) > len(other):', '                if len(own) < len(other):'),
    (M, '                    kept[slot] = index', '                    pass'),
    (M, 'own[:common] == other[:common]', 'own[:1] == other[:1]'),
    (M, 'if response.strip() and response.strip() != SILENCE:', 'if response.strip():'),
    # M: critic network
    (
        M,
        'persona = list(persona_ids)[: max(0, max_len - len(response) - 3)]',
        'persona = list(persona_ids)[: max(0, max_len - len(response) - 2)]',
    ),
    (
        M,
        'return [cls, *persona, sep, *response, sep]',
        'return [cls, *response, sep, *persona, sep]',
    ),
    (
        M,
        'response = list(response_ids)[: max(1, min(max_response, max_len - 4))]',
        'response = list(response_ids)[: max(1, max_len - 4)]',
    ),
    (
        M,
        'before = torch.cat([torch.zeros_like(seen[:, :1]), seen[:, :-1]], dim=1)',
        'before = seen',
    ),
    (M, 'return before.clamp(max=1)', 'return before'),
    (
        M,
        'return self.head(self.dropout(hidden[:, 0]))',
        'return self.head(self.dropout(hidden[:, -1]))',
    ),
    (M, 'valid = ids != self.padding_idx', 'valid = torch.ones_like(ids, dtype=torch.bool)'),
    (
        M,
        'hidden = self.encoder(ids, segment_ids(ids, self.sep), valid)',
        'hidden = self.encoder(ids, torch.zeros_like(ids), valid)',
    ),
    # M: sampler
    (M, "logits[:, list(banned)] = float('-inf')", 'pass'),
    (
        M,
        'chosen = sample(logits, top_k=top_k, temperature=temperature, generator=generator)',
        'chosen = sample(logits, top_k=0, temperature=temperature, generator=generator)',
    ),
    (
        M,
        'chosen = sample(logits, top_k=top_k, temperature=temperature, generator=generator)',
        'chosen = sample(logits, top_k=top_k, temperature=1.0, generator=generator)',
    ),
    (M, 'chosen = chosen.masked_fill(done, pad)', 'chosen = chosen'),
    (M, 'done = done | (chosen == end_idx)', 'done = chosen == end_idx'),
    (M, 'chosen = logits.argmax(dim=-1)', 'chosen = logits.argmin(dim=-1)'),
    (
        M,
        'picked = F.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)',
        'picked = F.log_softmax(logits / temperature, dim=-1).gather(1, chosen[:, None]).squeeze(1)',
    ),
    (M, 'log_probs.append(picked.masked_fill(done, 0.0))', 'log_probs.append(picked)'),
    (
        M,
        'return torch.cat([start, sample[:, :-1]], dim=1)',
        'return torch.cat([start, sample[:, 1:]], dim=1)',
    ),
    (
        M,
        # re-matched: decode is now a local (EncoderDecoder or ParlAI interface)
        'hidden, caches = decode(tokens, state, caches)',
        'hidden, _ = decode(tokens, state, caches)',
    ),
    # M: warm start
    (
        M,
        "linear(block.attention.qkv, f'{prefix}.attn.c_attn')",
        'pass  # the attention projections not loaded',
    ),
    (M, 'nn.init.zeros_(block.cross_attention.out.weight)', 'pass'),
    (M, "norm(stack.final_norm, 'ln_f')", 'pass'),
    (
        M,
        "gelu_approximate='tanh' if config.activation_function != 'gelu' else 'none'",
        "gelu_approximate='none'",
    ),
    (M, 'seq2seq.embeddings.positions.weight.copy_(wpe)', 'pass'),
    # L: losses/ppg.py
    (
        L,
        'return torch.where(probability > 0.5, 1.0, -1.0) * scale',
        'return torch.where(probability >= 0.5, 1.0, -1.0) * scale',
    ),
    (
        L,
        'return torch.where(probability > 0.5, 1.0, -1.0) * scale',
        'return torch.where(probability > 0.5, 1.0, 0.0) * scale',
    ),
    (
        L,
        'return torch.where(probability > 0.5, 1.0, -1.0) * scale',
        'return torch.where(probability > 0.5, 1.0, -1.0)',
    ),
    (L, 'return (2.0 * probability - 1.0) * scale', 'return (probability - 0.5) * scale'),
    (L, 'return (2.0 * probability - 1.0) * scale', 'return (2.0 * probability - 1.0)'),
    (
        L,
        'return reward_weighted_nll(log_probs, mask, rewards, None, normalise)',
        'return reward_weighted_nll(log_probs, mask, -rewards, None, normalise)',
    ),
    (
        L,
        'return reward_weighted_nll(log_probs, mask, rewards, None, normalise)',
        "return reward_weighted_nll(log_probs, mask, rewards, None, 'mean')",
    ),
    (
        L,
        'return reward_weighted_nll(log_probs, mask, rewards, None, normalise)',
        'return reward_weighted_nll(log_probs, mask, rewards, rewards.mean(), normalise)',
    ),
    (
        L,
        'log_probs, mask = sequence_log_probs(logits, sample, padding_idx)',
        'log_probs, mask = sequence_log_probs(logits, sample, -1)',
    ),
    (
        L,
        'return reward_weighted_nll(log_probs, mask, rewards, None, normalise)',
        'return reward_weighted_nll(log_probs, mask, rewards.abs(), None, normalise)',
    ),
    # R: agents/ppg_rl.py
    (R, 'self.model.eval()  # the sampling mode', 'self.model.train()  # the sampling mode'),
    (
        R,
        '        model.eval()\n        sample, log_probs',
        '        model.train()\n        sample, log_probs',
    ),
    (
        R,
        'rewards = critic_rewards(\n            probability,',
        'rewards = critic_rewards(\n            probability.flip(0),',
    ),
    (
        R,
        'self.critic.positive_probability(persona.texts, response.texts)',
        'self.critic.positive_probability(response.texts, persona.texts)',
    ),
    (
        R,
        'self.critic.positive_probability(persona.texts, response.texts)',
        "self.critic.positive_probability(persona.texts, [o['response'] for o in observations])",
    ),
    (
        R,
        'self.critic.positive_probability(persona.texts, response.texts)',
        "self.critic.positive_probability([' '.join(o['self_persona']) for o in observations], response.texts)",
    ),
    (
        R,
        "drg_source(o['context'], o['self_persona'], p)",
        "drg_source(o['context'], o['self_persona'], None)",
    ),
    (
        R,
        "drg_source(o['context'], o['self_persona'], p)",
        "drg_source(o['context'], o['self_persona'], ' '.join(o['partner_persona']))",
    ),
    (
        R,
        'for o, p in zip(observations, persona.texts)',
        'for o, p in zip(observations, persona.texts[::-1])',
    ),
    (
        R,
        "ppg_sources = [ppg_source(o['context'], o['self_persona']) for o in observations]",
        "ppg_sources = [ppg_source(o['context'], []) for o in observations]",
    ),
    (
        R,
        "('drg', getattr(self.model, 'module', self.model), response, self.NULL_IDX)",
        "('drg', getattr(self.model, 'module', self.model), response, self.END_IDX)",
    ),
    (R, "('ppg', ppg.model, persona, ppg.NULL_IDX)", "('ppg', ppg.model, persona, ppg.END_IDX)"),
    (
        R,
        "            if train not in ('both', name):",
        "            if train not in ('both', 'ppg', 'drg'):",
    ),
    (
        R,
        'loss = loss + generator_reinforce_loss(logits, rollout.sample, rewards, pad, normalise)',
        'loss = generator_reinforce_loss(logits, rollout.sample, rewards, pad, normalise)',
    ),
    (
        R,
        'loss = loss + generator_reinforce_loss(logits, rollout.sample, rewards, pad, normalise)',
        'loss = loss - generator_reinforce_loss(logits, rollout.sample, rewards, pad, normalise)',
    ),
    (
        R,
        'loss = loss + generator_reinforce_loss(logits, rollout.sample, rewards, pad, normalise)',
        "loss = loss + generator_reinforce_loss(logits, rollout.sample, rewards, pad, 'mean')",
    ),
    (
        R,
        'hidden, _ = model.seq2seq(source, decoder_input(sample, model.START_IDX))',
        'hidden, _ = model.seq2seq(source, sample)',
    ),
    # re-matched: the teacher-forced logits ban START/NULL with index_fill (was model.output)
    (
        R,
        "return logits.index_fill(-1, banned, float('-inf'))",
        'return logits',
    ),
    (R, 'banned=(agent.START_IDX, agent.NULL_IDX)', 'banned=(agent.NULL_IDX,)'),
    (R, "temperature=self.opt.get('rl_temperature') or 1.0", 'temperature=1.0'),
    (R, "top_k=self.opt.get('rl_top_k') or 0", 'top_k=0'),
    (R, "greedy=self.opt.get('rl_decoding') == 'greedy'", 'greedy=False'),
    (
        R,
        "persona = self._sample(ppg, ppg_sources, self.opt.get('rl_persona_max_len', 64))",
        "persona = self._sample(ppg, ppg_sources, self.opt.get('rl_response_max_len', 64))",
    ),
    (
        R,
        'return Rollout(source, sample, texts, log_probs.sum(-1))',
        'return Rollout(source, sample, texts, log_probs.mean(-1))',
    ),
    (
        R,
        'if key in drg_opt and drg_opt[key] is not None and key not in given:',
        'if key in drg_opt and drg_opt[key] is not None:',
    ),
    (R, '        self.model.train(was_training)\n        info', '        info'),
    (
        R,
        "response = self._sample(self, drg_sources, self.opt.get('rl_response_max_len', 32))",
        "response = self._sample(self, drg_sources[::-1], self.opt.get('rl_response_max_len', 32))",
    ),
    # re-matched: the flag is now set only when the PPG is frozen
    (
        R,
        "        if train not in ('both', 'ppg'):\n            model.ppg.requires_grad_(False)",
        '        if False:\n            model.ppg.requires_grad_(False)',
    ),
    # A: agents/ppg.py
    (
        A,
        "self.positive_index = self.class_list.index('1')",
        "self.positive_index = self.class_list.index('0')",
    ),
    (
        A,
        'return F.softmax(self._module(ids).float(), dim=-1)[:, self.positive_index]',
        'return F.softmax(self._module(ids).float(), dim=-1)[:, 1 - self.positive_index]',
    ),
    (A, '        self.model.eval()\n        return F.softmax', '        return F.softmax'),
    (
        A,
        'self.dict.txt2vec(persona),\n            self.dict.txt2vec(response),',
        'self.dict.txt2vec(response),\n            self.dict.txt2vec(persona),',
    ),
    (
        A,
        "persona, _, response = obs['text'].rpartition('\\n')",
        "response, _, persona = obs['text'].partition('\\n')",
    ),
    (A, "if mode != 'none' and (training or mode == 'gold'):", "if mode != 'none':"),
    (A, "training = 'labels' in observation", 'training = True'),
    (A, "if not training and mode == 'generated':", "if mode == 'generated':"),
    (
        A,
        "obs['partner_persona'], obs['context'], self.partner_top_k",
        "obs['partner_persona'], obs['context'], 0",
    ),
    (
        A,
        "text = drg_source(obs['context'], obs['self_persona'], partner)",
        "text = drg_source(obs['context'], obs['self_persona'], None)",
    ),
    (
        A,
        'cache = None if self.persona_generator_trainable else self._persona_cache',
        'cache = self._persona_cache',
    ),
    (
        A,
        # re-matched: the class gained hf_glue.HfCheckpointMixin
        'class PpgCriticAgent(hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchClassifierAgent):',
        'class PpgCriticAgent(hf_glue.HfCheckpointMixin, TorchClassifierAgent):',
    ),
    (
        A,
        "parser.set_defaults(classes=['0', '1'], learningrate=5e-6, optimizer='adam')",
        "parser.set_defaults(classes=['0', '1'], learningrate=1e-4, optimizer='adamw')",
    ),
    (
        A,
        "observation['ppg_source'] = ppg_source(\n                observation['context'], observation['self_persona']\n            )",
        "observation['ppg_source'] = ppg_source(\n                observation['context'], []\n            )",
    ),
    # T: tasks/ppg/agents.py
    (T, '        context = [*context, turn.labels[0]]', '        context = [*context]'),
    (T, "if self.opt.get('critic_deduplicate', True):", 'if False:'),
    (
        T,
        "return [{**row, 'text': text, 'labels': [persona_text(row['partner_persona'])]}]",
        "return [{**row, 'text': text, 'labels': [persona_text(row['self_persona'])]}]",
    ),
    (
        T,
        "return episodes[:-held_out] if self.split == 'train' else episodes[-held_out:]",
        "return episodes[held_out:] if self.split == 'train' else episodes[:held_out]",
    ),
    (
        T,
        "text = drg_source(row['context'], row['self_persona'], partner)",
        "text = drg_source(row['context'], row['partner_persona'], partner)",
    ),
    (
        T,
        'for pair in critic_pairs(self_persona, partner_persona, turns, which):',
        'for pair in critic_pairs(partner_persona, self_persona, turns, which):',
    ),
    # R: PPG joint RL
    (
        R,
        'agent._vectorize_text(s, truncate=agent.text_truncate, truncate_left=True)',
        'agent._vectorize_text(s, truncate=agent.text_truncate, truncate_left=False)',
    ),
    # A: PPG agents
    (A, "obs.force_set('text_vec', full)", 'pass'),
    # M: PPG modules
    (
        M,
        '        if greedy:\n            chosen = logits.argmax(dim=-1)',
        '        if not greedy:\n            chosen = logits.argmax(dim=-1)',
    ),
    (
        M,
        'tokens = torch.full((batch, 1), start_idx, dtype=torch.long, device=source.device)',
        'tokens = torch.full((batch, 1), end_idx, dtype=torch.long, device=source.device)',
    ),
    # R: PPG joint RL
    (
        R,
        "probability, self.opt.get('reward_type', 'label'), self.opt.get('reward_scale', 1.0)",
        "probability, 'label', self.opt.get('reward_scale', 1.0)",
    ),
    (R, "normalise = self.opt.get('rl_normalise', 'mean')", "normalise = 'mean'"),
    # T: PPG teachers: context, critic pairs, held-out split
    (
        T,
        'for number, turn in enumerate(episode.turns, start=1):',
        'for number, turn in enumerate(episode.turns, start=0):',
    ),
    (
        T,
        "        partner = persona_text(row['partner_persona'])",
        "        partner = persona_text(row['self_persona'])",
    ),
    # A: PPG agents
    (
        A,
        'partner = self.gold_partner(observation)',
        "partner = persona_text(observation['partner_persona'])",
    ),
    # L: PPG REINFORCE loss
    (
        L,
        'log_probs, mask = sequence_log_probs(logits, sample, padding_idx)',
        'log_probs, mask = sequence_log_probs(logits.detach(), sample, padding_idx)',
    ),
]

"""Mutants of P2Bot (transmitter model, losses, receiver, self-play world, rewards, REINFORCE).

Converted from the P2Bot engineer's hand-made lists (three rounds, exact duplicates dropped), issue #18. Run: .venv/bin/python tests/mutants/run.py --system p2bot
"""

M = 'parlai_ext/modules/p2bot.py'
L = 'parlai_ext/losses/p2bot.py'
R = 'parlai_ext/losses/reinforce.py'
W = 'tasks/p2bot_selfplay/worlds.py'
A = 'parlai_ext/agents/p2bot.py'
# the network side of the agents (dictionary, P2BotTransmitterModel, HFLanguageModelScorer)
AM = 'parlai_ext/agents/p2bot_model.py'
# the transmitter's MLE normalisation (ParlAI's loss/ppl metrics) lives here
G = 'parlai_ext/agents/generation.py'
RX = 'parlai_ext/agents/p2bot_receiver.py'
RW = 'parlai_ext/rewards.py'

T = 'tests/'
MODELS, P2 = T + 'test_p2bot_models.py', T + 'test_p2bot.py'
TRANSMITTER = T + 'test_p2bot_transmitter.py'
SELFPLAY = [T + 'test_p2bot_selfplay.py', TRANSMITTER]  # one file until it was split by topic
HF = T + 'test_p2bot_hf.py'
TESTS = {
    M: [MODELS, P2, *SELFPLAY, HF],
    L: [P2, MODELS, *SELFPLAY],
    R: [T + 'test_reinforce.py', *SELFPLAY],
    W: [*SELFPLAY],
    A: [*SELFPLAY, MODELS],
    AM: [*SELFPLAY, MODELS, HF],
    G: [TRANSMITTER, '-k', 'transmitter_loss'],
    RX: [*SELFPLAY, MODELS],
    RW: [T + 'test_coral.py', T + 'test_reinforce.py', *SELFPLAY],
}

MUTANTS = [
    # M: modules/p2bot.py
    (M, 'cls_position = lengths + 1', 'cls_position = lengths'),
    (
        M,
        'sequence = torch.cat([start, targets, pad], dim=1)',
        'sequence = torch.cat([targets, start, pad], dim=1)',
    ),
    (
        M,
        'context.length[:, None] + torch.arange(ls, device=device)[None, :]',
        'lc + torch.arange(ls, device=device)[None, :].expand(batch, ls)',
    ),
    (
        M,
        'valid = torch.cat([context.valid, sequence != self.padding_idx], dim=1)',
        'valid = torch.cat([context.valid, torch.ones_like(sequence, dtype=torch.bool)], dim=1)',
    ),
    (
        M,
        'return hidden[:, prefix.shape[1] - tokens.shape[1] :], PrefixCache(prefix)',
        'return hidden[:, : tokens.shape[1]], PrefixCache(prefix)',
    ),
    (M, 'return PrefixCache(cache.tokens.index_select(0, indices))', 'return cache'),
    (
        M,
        'positions = state.length[:, None] + past + torch.arange(new, device=device)[None, :]',
        'positions = state.length[:, None] + torch.arange(new, device=device)[None, :]',
    ),
    (
        M,
        '        state = hidden[rows, cls_position]\n',
        '        state = hidden[rows, cls_position - 1]\n',
    ),
    (
        M,
        'lm_logits = self.backbone.logits(hidden[:, : targets.shape[1]])',
        'lm_logits = self.backbone.logits(hidden[:, 1 : targets.shape[1] + 1])',
    ),
    (
        M,
        '    return (picked * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)\n\n\ndef eq3_score',
        '    return (picked * mask).sum(dim=1) / mask.shape[1]\n\n\ndef eq3_score',
    ),
    (
        M,
        '    return (picked * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)\n\n\ndef eq3_score',
        '    return picked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)\n\n\ndef eq3_score',
    ),
    (
        M,
        'return alpha * length_normalised + (1.0 - alpha) * nup_log_prob',
        'return (1.0 - alpha) * length_normalised + alpha * nup_log_prob',
    ),
    (
        M,
        "            logits[:, banned] = float('-inf')\n        chosen",
        '            pass\n        chosen',
    ),
    (
        M,
        'chosen = sample(logits, generator=generator).masked_fill(done, pad)',
        'chosen = logits.argmax(-1).masked_fill(done, pad)',
    ),
    (
        M,
        'chosen = sample(logits, generator=generator).masked_fill(done, pad)',
        'chosen = sample(logits, generator=generator)',
    ),
    (M, 'done = done | (chosen == end)', 'done = chosen == end'),
    (
        M,
        'tokens = chosen[:, None]\n        if bool(done.all()):',
        'tokens = tokens\n        if bool(done.all()):',
    ),
    (
        M,
        'weights = valid.to(hidden.dtype).unsqueeze(-1)',
        'weights = torch.ones_like(valid, dtype=hidden.dtype).unsqueeze(-1)',
    ),
    (
        M,
        'return impressions @ personas.transpose(-1, -2) / math.sqrt(impressions.shape[-1])',
        'return impressions @ personas.transpose(-1, -2)',
    ),
    (
        M,
        'return impressions @ personas.transpose(-1, -2) / math.sqrt(impressions.shape[-1])',
        'return impressions @ personas.transpose(-1, -2) / impressions.shape[-1]',
    ),
    (M, '    logits = scores / tau\n', '    logits = scores\n'),
    (M, '    logits = scores / tau\n', '    logits = scores * tau\n'),
    (M, "        logits = logits.masked_fill(~mask, float('-inf'))", '        pass'),
    (
        M,
        '    return (weights * scores).sum(dim=-1)\n',
        '    return (weights * scores).mean(dim=-1)\n',
    ),
    (
        M,
        '    weights = torch.softmax(logits, dim=-1)\n',
        '    weights = torch.softmax(-logits, dim=-1)\n',
    ),
    (
        M,
        '    return (per_row * rows).sum(dim=-1) / rows.sum(dim=-1).clamp(min=1.0)',
        '    return (per_row * rows).sum(dim=-1)',
    ),
    (
        M,
        '    return (per_row * rows).sum(dim=-1) / rows.sum(dim=-1).clamp(min=1.0)',
        '    return per_row.mean(dim=-1)',
    ),
    (
        M,
        '    return start + (end - start) * fraction',
        '    return start + (start - end) * fraction',
    ),
    (M, '    fraction = min(max(step / steps, 0.0), 1.0)', '    fraction = max(step / steps, 0.0)'),
    (M, '    mask = index >= 0\n', '    mask = index > 0\n'),
    (
        M,
        '        scores = scores * mask\n        c = cumulative_score(scores, float(self.tau), rows, column_mask)',
        '        c = cumulative_score(scores, float(self.tau), rows, column_mask)',
    ),
    (
        M,
        'c = cumulative_score(scores, float(self.tau), rows, column_mask)',
        'c = cumulative_score(scores, 1.0, rows, column_mask)',
    ),
    (
        M,
        'return aggregate(scores, float(self.tau), column_mask)',
        'return aggregate(scores, 1.0, column_mask)',
    ),
    (M, 'return aggregate(scores, float(self.tau), column_mask)', 'return scores.max(-1).values'),
    (
        M,
        'impressions = self.impression_encoder(utterance_tokens)  # (B, d)',
        'impressions = self.persona_encoder(utterance_tokens)  # (B, d)',
    ),
    # L: losses/p2bot.py
    (
        L,
        'torch.ones(len(positive_logits), dtype=torch.long, device=logits.device),\n            torch.zeros(',
        'torch.zeros(len(positive_logits), dtype=torch.long, device=logits.device),\n            torch.ones(',
    ),
    (
        L,
        'hinge = (margin + scores - positive[:, None]).clamp(min=0.0)',
        'hinge = (margin - scores + positive[:, None]).clamp(min=0.0)',
    ),
    (
        L,
        'hinge = (margin + scores - positive[:, None]).clamp(min=0.0)',
        'hinge = margin + scores - positive[:, None]',
    ),
    (
        L,
        'margin_part = (hinge * is_distractor).sum(dim=1) / max(candidates - 1, 1)',
        'margin_part = hinge.sum(dim=1) / max(candidates - 1, 1)',
    ),
    (
        L,
        'margin_part = (hinge * is_distractor).sum(dim=1) / max(candidates - 1, 1)',
        'margin_part = (hinge * is_distractor).sum(dim=1)',
    ),
    (
        L,
        'l1_part = (relevance.abs() * mask).flatten(1).sum(dim=1)',
        'l1_part = relevance.abs().flatten(1).sum(dim=1)',
    ),
    (
        L,
        'l1_part = (relevance.abs() * mask).flatten(1).sum(dim=1)',
        'l1_part = (relevance * mask).flatten(1).sum(dim=1)',
    ),
    (
        L,
        'return (margin_part + beta * l1_part).mean(), margin_part.mean(), l1_part.mean()',
        'return margin_part.mean(), margin_part.mean(), l1_part.mean()',
    ),
    (
        L,
        'gamma ** (2 * distance - 1) * user_scores[:, k]',
        'gamma ** (2 * distance) * user_scores[:, k]',
    ),
    (
        L,
        '+ gamma ** (2 * distance) * agent_scores[:, k]',
        '+ gamma ** (2 * distance) * user_scores[:, k]',
    ),
    (L, 'for k in range(n + 1, turns):', 'for k in range(n, turns):'),
    (
        L,
        'return lambdas[0] * language + lambdas[1] * coherence + lambdas[2] * persona',
        'return lambdas[0] * language + lambdas[2] * coherence + lambdas[1] * persona',
    ),
    (
        L,
        '        return rewards.mean(dim=0, keepdim=True).expand_as(rewards)',
        '        return rewards.mean(dim=1, keepdim=True).expand_as(rewards)',
    ),
    (
        L,
        "    if kind == 'batch':\n        return rewards.mean().expand_as(rewards)",
        "    if kind == 'batch':\n        return rewards.mean(dim=0, keepdim=True).expand_as(rewards)",
    ),
    # R: losses/reinforce.py
    (R, '    return picked.masked_fill(~mask, 0.0), mask', '    return picked, mask'),
    (
        R,
        '    mask = targets != padding_idx\n    picked = log_probs.gather',
        '    mask = targets >= padding_idx\n    picked = log_probs.gather',
    ),
    (
        R,
        '        advantages = advantages - baseline.to(advantages.device)',
        '        advantages = advantages + baseline.to(advantages.device)',
    ),
    (
        R,
        '        advantages = advantages - baseline.to(advantages.device)',
        '        advantages = advantages',
    ),
    (
        R,
        '    per_sequence = -advantages * sequence_log_prob',
        '    per_sequence = advantages * sequence_log_prob',
    ),
    (
        R,
        '    sequence_log_prob = (log_probs_per_token * weights).sum(dim=-1)',
        '    sequence_log_prob = log_probs_per_token.sum(dim=-1)',
    ),
    (
        R,
        '        return per_sequence.sum() / weights.sum().clamp(min=1.0)',
        '        return per_sequence.mean()',
    ),
    (
        R,
        '    return (per_sequence / weights.sum(dim=-1).clamp(min=1.0)).mean()',
        '    return (per_sequence / weights.sum().clamp(min=1.0)).mean()',
    ),
    (
        R,
        "    if normalise == 'mean':\n        return per_sequence.mean()",
        "    if normalise == 'mean':\n        return per_sequence.sum()",
    ),
    (
        R,
        '    advantages = rewards.detach().to(log_probs_per_token.dtype)',
        '    advantages = rewards.to(log_probs_per_token.dtype)',
    ),
    (R, "    check_finite_rewards(rewards, 'reward')\n", ''),
    (R, "        check_finite_rewards(baseline, 'baseline')\n", ''),
    (R, '    if bool(finite.all()):\n        return', '    if bool(finite.any()):\n        return'),
    # W: world
    (
        W,
        'texts = [d[2 * n + 1] for d in dialogues for n in range(self.turns)]\n                r1 = self.lm.score(texts)',
        'texts = [d[2 * n] for d in dialogues for n in range(self.turns)]\n                r1 = self.lm.score(texts)',
    ),
    (
        W,
        "scorer = self.user if self.opt.get('rs2_model', 'user') == 'user' else self.learner",
        'scorer = self.learner',
    ),
    (
        W,
        "scorer.context_vec(p['agent_persona'], d[: 2 * n + 1])",
        "scorer.context_vec(p['user_persona'], d[: 2 * n + 1])",
    ),
    (
        W,
        "scorer.context_vec(p['agent_persona'], d[: 2 * n + 1])",
        "scorer.context_vec(p['agent_persona'], d[: 2 * n + 2])",
    ),
    (
        W,
        '_, r2 = scorer.score_replies(scorer_contexts, flat_replies)',
        'r2, _ = scorer.score_replies(scorer_contexts, flat_replies)',
    ),
    (
        W,
        'r1, _ = self.user.score_replies([empty] * len(flat_replies), flat_replies)',
        '_, r1 = self.user.score_replies([empty] * len(flat_replies), flat_replies)',
    ),
    (
        W,
        'agent_texts = [d[2 * n + 1] for d in dialogues for n in range(self.turns)]',
        'agent_texts = [d[2 * n] for d in dialogues for n in range(self.turns)]',
    ),
    (
        W,
        'user_texts = [d[2 * n] for d in dialogues for n in range(self.turns)]',
        'user_texts = [d[2 * n + 1] for d in dialogues for n in range(self.turns)]',
    ),
    (
        W,
        "user_personas = [p['user_persona'] for p in pairs for _ in range(self.turns)]",
        "user_personas = [p['agent_persona'] for p in pairs for _ in range(self.turns)]",
    ),
    (
        W,
        "agent_personas = [p['agent_persona'] for p in pairs for _ in range(self.turns)]",
        "agent_personas = [p['user_persona'] for p in pairs for _ in range(self.turns)]",
    ),
    (
        W,
        'r3 = discounted_persona_reward(r_user, r_agent, self.gamma)',
        'r3 = discounted_persona_reward(r_agent, r_user, self.gamma)',
    ),
    (
        W,
        'r3 = discounted_persona_reward(r_user, r_agent, self.gamma)',
        'r3 = discounted_persona_reward(r_user, r_agent)',
    ),
    (
        W,
        'return total_reward(r1, r2, r3, self.lambdas), (r1, r2, r3)',
        'return total_reward(r1, r2, r3), (r1, r2, r3)',
    ),
    (
        W,
        'baseline = reinforce_baseline(rewards, self.baseline).reshape(-1).to(device)',
        "baseline = reinforce_baseline(rewards, 'batch').reshape(-1).to(device)",
    ),
    (
        W,
        'baseline = reinforce_baseline(rewards, self.baseline).reshape(-1).to(device)',
        'baseline = reinforce_baseline(rewards, self.baseline).t().reshape(-1).to(device)',
    ),
    (
        W,
        '        flat_rewards = rewards.reshape(-1).to(device)',
        '        flat_rewards = rewards.t().reshape(-1).to(device)',
    ),
    (
        W,
        '        model.eval()\n        learner.zero_grad()',
        '        model.train()\n        learner.zero_grad()',
    ),
    (W, '        learner.backward(loss)\n', '        learner.backward(-loss)\n'),
    (W, "normalise=self.opt.get('rl_normalise', 'mean'),", "normalise='mean',"),
    (
        W,
        # re-matched: the world samples through generate(..., sample=True, max_len=...)
        '            sampled = learner.generate(turn_contexts, sample=True, max_len=self.max_len)',
        '            sampled = learner.generate(turn_contexts)',
    ),
    (W, '            if n < self.turns - 1:', '            if n < self.turns:'),
    (
        W,
        "        if isinstance(record, dict) and record.get('update', 0) <= updates:",
        "        if isinstance(record, dict) and record.get('update', 0) < updates:",
    ),
    (W, '            remembered,\n', ''),
    (W, "        self.learner.opt['selfplay_user_model'] = user_file", '        pass'),
    (W, '        self.last_dialogue = dialogues[0]', '        self.last_dialogue = dialogues[-1]'),
    # A: agents
    (
        A,
        "        for sentence in persona if self.opt.get('use_persona', True) else ():",
        '        for sentence in persona:',
    ),
    (A, "        loss = self.opt.get('mle_coef', 1.0) * mle", '        loss = mle'),
    (
        A,
        "            loss = loss + self.opt.get('nup_coef', 1.0) * nup",
        '            loss = loss + nup',
    ),
    (
        G,
        '    return loss / num_target_tokens.sum()',
        '    return loss_per_token.mean()',
    ),
    (
        A,
        '            negative = model.transmitter(None, distractors.to(labels.device), state=state)\n            nup = nup_loss(nup_logits, negative.nup_logits)',
        '            negative = model.transmitter(None, distractors.to(labels.device), state=state)\n            nup = nup_loss(negative.nup_logits, nup_logits)',
    ),
    (
        A,
        "        return eq3_score(lennorm, nup, self.opt.get('rerank_alpha', 0.1))",
        '        return eq3_score(lennorm, nup, 0.1)',
    ),
    (
        A,
        '            order = scores.argsort(descending=True).tolist()',
        '            order = scores.argsort().tolist()',
    ),
    (
        A,
        '            sorted_scores, order = scores.sort(descending=True)',
        '            sorted_scores, order = scores.sort()',
    ),
    (
        A,
        '            replies.append(row[: int(ends[0]) + 1] if len(ends) else row)',
        '            replies.append(row[: int(ends[0])] if len(ends) else row)',
    ),
    (
        A,
        '            replies.append(row[: int(ends[0]) + 1] if len(ends) else row)',
        '            replies.append(row[: int(ends[0]) + 1] if len(ends) else torch.cat([row[:-1], row.new_tensor([self.END_IDX])]))',
    ),
    (
        A,
        '        self.model.eval()\n        try:\n            rows = sample_responses(',
        '        try:\n            rows = sample_responses(',
    ),
    (
        AM,
        '        return lennorm, F.log_softmax(out.nup_logits.float(), dim=-1)[:, 1]',
        '        return lennorm, F.log_softmax(out.nup_logits.float(), dim=-1)[:, 0]',
    ),
    (
        AM,
        '        lennorm = length_normalised_log_prob(\n            self.mask_logits(out.lm_logits), targets, self.NULL_IDX\n        )',
        '        lennorm = length_normalised_log_prob(out.lm_logits, targets, self.NULL_IDX)',
    ),
    # RX: agents
    (
        RX,
        "            self._number_training_updates,\n            self.opt['tau_start'],",
        "            0,\n            self.opt['tau_start'],",
    ),
    (RX, '        self._module.tau.fill_(tau)', '        pass'),
    (
        RX,
        'class P2BotReceiverAgent(hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchAgent):',
        'class P2BotReceiverAgent(hf_glue.HfCheckpointMixin, TorchAgent):',
    ),
    # A: agents
    (
        A,
        'class P2BotTransmitterAgent(\n    hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchGeneratorAgent\n',
        'class P2BotTransmitterAgent(\n    hf_glue.HfCheckpointMixin, TorchGeneratorAgent\n',
    ),
    (
        AM,
        '            rows.append(([self.prefix] if self.prefix is not None else []) + ids)',
        '            rows.append(ids)',
    ),
    (
        AM,
        '        return (picked * mask).sum(1) / mask.sum(1).clamp(min=1)',
        '        return picked.sum(1) / mask.sum(1).clamp(min=1)',
    ),
    # RW: rewards.py (CORAL's reward interface)
    (RW, '        if not 0.0 <= value <= 1.0:', '        if not 0.0 <= value:'),
    (
        RW,
        '        return torch.full((len(responses),), float(self.value))',
        '        return torch.full((len(responses),), 1.0)',
    ),
    (
        RW,
        '            context_vecs = [vectorize(text, truncate_left=True) for text in contexts]',
        '            context_vecs = [vectorize(text, truncate_left=False) for text in contexts]',
    ),
    (
        RW,
        '        return scores.detach().float().cpu().view(-1)',
        '        return 1 - scores.detach().float().cpu().view(-1)',
    ),
    (RW, '    module.eval()\n', ''),
    (RW, '        parameter.requires_grad_(False)', '        pass'),
    (
        RW,
        "        return ConstantReward(float(spec.split(':', 1)[1]))",
        '        return ConstantReward(0.5)',
    ),
    (RW, "    if callable(getattr(agent, 'score', None)):", '    if False:'),
    # W: P2Bot self-play world: RS.1-RS.3 rewards, turns, personas
    (
        W,
        '    other = rng.choice([j for j in range(len(episodes)) if j != index])',
        '    other = rng.choice(range(len(episodes)))',
    ),
    (
        W,
        "    user_persona = episode['partner_persona']\n",
        "    user_persona = episode['self_persona']\n",
    ),
    (
        W,
        "        'agent_persona': list(episodes[other]['self_persona']),",
        "        'agent_persona': list(episodes[other]['partner_persona']),",
    ),
    (
        W,
        "        'opener': episode['first_utterance'],",
        "        'opener': episodes[other]['first_utterance'],",
    ),
    # A: P2Bot transmitter agent
    (
        A,
        '            turn = [self.self_idx if is_self else self.partner_idx] + self.dict.txt2vec(text)',
        '            turn = [self.partner_idx if is_self else self.self_idx] + self.dict.txt2vec(text)',
    ),
    (A, '            turn = turn[-remaining:]', '            turn = turn[:remaining]'),
    (A, '        for is_self, text in reversed(turns):', '        for is_self, text in turns:'),
    (
        A,
        '            self.build_context(persona, [((last - i) % 2 == 1, t) for i, t in enumerate(turns)])',
        '            self.build_context(persona, [((last - i) % 2 == 0, t) for i, t in enumerate(turns)])',
    ),
    # W: P2Bot self-play world: RS.1-RS.3 rewards, turns, personas
    (
        W,
        "            if n < self.turns - 1:\n                user_contexts = [\n                    user.context_vec(p['user_persona'], d)",
        "            if n < self.turns - 1:\n                user_contexts = [\n                    user.context_vec(p['agent_persona'], d)",
    ),
    (
        W,
        "                learner.context_vec(p['agent_persona'], d) for p, d in zip(pairs, dialogues)",
        "                learner.context_vec(p['user_persona'], d) for p, d in zip(pairs, dialogues)",
    ),
    # RX: P2Bot receiver agent
    (
        RX,
        "        return out, out.scores.masked_fill(missing, float('-inf'))",
        '        return out, out.scores',
    ),
    (
        RX,
        "            out.scores, true, out.relevance, valid, self.opt['margin'], self.opt['l1_beta']",
        "            out.scores, true, out.relevance, valid, self.opt['margin'], 0.0",
    ),
    # W: P2Bot self-play world: RS.1-RS.3 rewards, turns, personas
    (
        W,
        'sampled = learner.generate(turn_contexts, sample=True, max_len=self.max_len)',
        'sampled = learner.generate(turn_contexts, max_len=self.max_len)',
    ),
    (
        W,
        'sampled = learner.generate(turn_contexts, sample=True, max_len=self.max_len)',
        'sampled = learner.generate(turn_contexts, sample=True)',
    ),
    # A: P2Bot transmitter agent
    (
        A,
        '        if sample:\n            return self.sample_replies(contexts, max_len)',
        '        if sample:\n            return self.sample_replies(contexts, self.label_truncate or 32)',
    ),
    # RX: P2Bot receiver agent
    (
        RX,
        '        missing = slots[None, :] >= batch.n_candidates.to(out.scores.device)[:, None]',
        '        missing = slots[None, :] > batch.n_candidates.to(out.scores.device)[:, None]',
    ),
    # M: the receiver's SentenceEncoder honours --activation / --attention-dropout
    (
        M,
        'dropout=dropout, attention_dropout=attention_dropout, activation=activation,',
        "dropout=dropout, attention_dropout=attention_dropout, activation='gelu',",
    ),
    (
        M,
        'dropout=dropout, attention_dropout=attention_dropout, activation=activation,',
        'dropout=dropout, attention_dropout=0.0, activation=activation,',
    ),
    (
        M,
        "activation: str = 'gelu',\n        attention_dropout",
        "activation: str = 'relu',\n        attention_dropout",
    ),
    (
        M,
        'attention_dropout: float = 0.0,\n    ) -> None:',
        'attention_dropout: float = 0.1,\n    ) -> None:',
    ),
    # RX: receivers saved before the encoders followed --activation / --attention-dropout
    (
        RX,
        "opt_from_disk.setdefault('encoders_follow_options', False)",
        "opt_from_disk.setdefault('encoders_follow_options', True)",
    ),
    (
        RX,
        "if not opt.get('encoders_follow_options', False):",
        "if opt.get('encoders_follow_options', False):",
    ),
    (
        RX,
        "del args['attention_dropout'], args['activation']",
        "del args['attention_dropout']",
    ),
    (
        RX,
        "del args['attention_dropout'], args['activation']",
        "del args['activation']",
    ),
]

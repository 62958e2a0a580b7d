"""ParlAI glue for PPG's RL stage (Lu et al., NAACL 2022, §3.3): ``-m ppg_rl``.

Unofficial re-implementation. The agent owns both generators (the DRG is its ``model``, the
PPG a sub-agent whose network is a sub-module of it) and the frozen critic; each training
batch samples p̂ then r̂, asks the critic, and updates both generators by REINFORCE. The
generators and the critic themselves are in :mod:`parlai_ext.agents.ppg`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from parlai.core.agents import create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch, Output
from parlai.utils.io import PathManager
from parlai.utils.torch import atomic_save

from parlai_ext.agents.ppg import PpgResponseGeneratorAgent, pad_rows
from parlai_ext.losses.ppg import REWARD_TYPES, critic_rewards, generator_reinforce_loss
from parlai_ext.losses.reinforce import NORMALISATIONS, average_gradients, sequence_log_probs
from parlai_ext.modules.ppg import decoder_input, drg_source, ppg_source, sample_sequences


@dataclass
class Rollout:
    """One generator's samples for a batch: its input ids, the sampled ids (padded after END),
    their texts, and each sample's log-probability at sampling time."""

    source: torch.Tensor
    sample: torch.Tensor
    texts: list[str]
    log_prob: torch.Tensor


ARCHITECTURE_KEYS = (
    'embedding_size',
    'n_layers',
    'n_encoder_layers',
    'n_decoder_layers',
    'n_heads',
    'ffn_size',
    'n_positions',
    'activation',
    'dropout',
    'attention_dropout',
    'gelu_approximate',
    'hf_model_dir',
    'hf_architecture',
    'hf_gguf_file',
    'hf_prefix_lm',
    'text_truncate',
    'label_truncate',
    'dict_tokenizer',
    'dict_lower',
    # a LoRA DRG's model file holds only its adapters: the RL model needs the same adapters
    'lora_rank',
    'lora_alpha',
    'lora_dropout',
    'lora_target_modules',
)


class PpgRlAgent(PpgResponseGeneratorAgent):
    """The RL stage (§3.3): joint REINFORCE of the PPG and the DRG with a frozen critic.

    For each training example: p̂ ~ PPG(s, c), r̂ ~ DRG(s, p̂, c), L̂ = critic(p̂, r̂),
    R = +1 / −1, and the loss −R log P(p̂ | s, c) − R log P(r̂ | s, p̂, c). Start from trained
    models: ``--init-model DRG --ppg-model-file PPG --critic-model-file CRITIC`` (the DRG's
    architecture options are taken from its ``.opt``). Evaluation is the DRG's with the
    PPG's generated partner personas. Saving ``-mf M`` writes ``M`` (both generators and the
    optimizer: ``train_model`` resumes from it), ``M.ppg`` (the PPG alone, a
    ``ppg_persona_generator``) and ``M.drg`` (the DRG alone, a ``ppg_response_generator``
    using ``M.ppg``).

    Example::

        parlai train_model -m ppg_rl -t ppg_ext -mf /tmp/rl --init-model /tmp/drg \\
            --ppg-model-file /tmp/ppg --critic-model-file /tmp/critic -bs 20
    """

    persona_generator_trainable = True

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('PPG reinforcement learning')
        group.add_argument('--critic-model-file', type=str, default=None, help='trained ppg_critic')
        group.add_argument(
            '--reward-type',
            choices=REWARD_TYPES,
            default='label',
            help='label: R = +1/-1 from the predicted label (the paper); probability: '
            'R = 2 P(L=1) - 1',
        )
        group.add_argument('--reward-scale', type=float, default=1.0, help='R is multiplied by it')
        group.add_argument(
            '--rl-train',
            choices=['both', 'ppg', 'drg'],
            default='both',
            help='which generators RL updates (Table 7 ablation); the other stays frozen',
        )
        group.add_argument(
            '--rl-decoding',
            choices=['sample', 'greedy'],
            default='sample',
            help='how p̂ and r̂ are produced during RL (the paper does not say)',
        )
        group.add_argument('--rl-top-k', type=int, default=0, help='>0: top-k sampling')
        group.add_argument('--rl-temperature', type=float, default=1.0)
        group.add_argument('--rl-persona-max-len', type=int, default=64)
        group.add_argument('--rl-response-max-len', type=int, default=32)
        group.add_argument(
            '--rl-normalise',
            choices=NORMALISATIONS,
            default='mean',
            help="mean: batch mean of -R sum_t log p (the paper's per-example gradient)",
        )
        parser.set_defaults(partner_personas='generated', learningrate=5e-6, optimizer='adam')
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        if not shared:
            self._take_drg_architecture(opt)
        self.critic = None
        super().__init__(opt, shared)
        if shared:
            self.critic = shared.get('critic')
        elif 'train' in self.opt.get('datatype', '') and self.opt.get('critic_model_file'):
            self._load_critic()

    @staticmethod
    def _take_drg_architecture(opt: Opt) -> None:
        """A fresh run copies the architecture (and dropout) of the DRG it starts from
        (``--init-model``), except the options given on the command line."""
        model_file, init_model = opt.get('model_file'), opt.get('init_model')
        if model_file and PathManager.exists(model_file):
            return
        if not init_model or not PathManager.exists(init_model + '.opt'):
            return
        drg_opt = Opt.load(init_model + '.opt')
        given = opt.get('override') or {}
        for key in ARCHITECTURE_KEYS:
            if key in drg_opt and drg_opt[key] is not None and key not in given:
                opt[key] = drg_opt[key]

    def share(self) -> dict:
        shared = super().share()
        shared['critic'] = self.critic
        return shared

    def _load_critic(self) -> None:
        path = self.opt.get('critic_model_file')
        if not path:
            raise ValueError('ppg_rl training needs --critic-model-file (a trained ppg_critic)')
        critic = create_agent_from_model_file(path, {'datatype': 'valid'})
        if critic is None:
            raise FileNotFoundError(f'no critic model at {path}')
        critic.model.eval()
        critic.model.requires_grad_(False)  # frozen during RL (Appendix B)
        self.critic = critic

    def build_model(self):
        model = super().build_model()
        model_file = self.opt.get('model_file')
        own_copy = f'{model_file}.ppg' if model_file else None
        if own_copy and PathManager.exists(model_file) and PathManager.exists(own_copy):
            path = own_copy  # resuming / evaluating: the PPG saved with this model
        else:
            path = self._persona_generator_path()
        self.persona_generator = self._load_persona_generator(path)
        # the PPG's network is a sub-module of the model: one optimizer, one gradient clip,
        # one checkpoint for both generators
        model.add_module('ppg', self.persona_generator.model)
        # the frozen one stays frozen (a trained one keeps its own flags: LoRA's base is frozen)
        train = self.opt.get('rl_train', 'both')
        if train not in ('both', 'drg'):
            for name, parameter in model.named_parameters():
                if not name.startswith('ppg.'):
                    parameter.requires_grad_(False)
        if train not in ('both', 'ppg'):
            model.ppg.requires_grad_(False)
        return model

    def load_state_dict(self, state_dict):
        if not any(k.startswith('ppg.') for k in state_dict):  # a plain DRG (--init-model)
            ppg_state = self.model.ppg.state_dict()
            state_dict = {**state_dict, **{f'ppg.{k}': v for k, v in ppg_state.items()}}
        super().load_state_dict(state_dict)

    def save(self, path: str | None = None) -> None:
        path = self.opt.get('model_file', None) if path is None else path
        if path:
            # train_model builds <model>.dict from the data before the agent exists, and
            # TorchAgent.save keeps an existing one; ours is the --init-model DRG's: write it
            self.dict.save(path + '.dict', sort=False)
        super().save(path)
        if not path or not PathManager.exists(path):
            return
        self.persona_generator.save(path + '.ppg')
        # the checkpoint's weights (a LoRA model's adapters and heads only, not its frozen base)
        saved = self.state_dict()['model']
        drg_state = {k: v for k, v in saved.items() if not k.startswith('ppg.')}
        atomic_save({'model': drg_state}, path + '.drg')
        drg_opt = copy.deepcopy(self.opt)
        drg_opt['model'] = 'ppg_response_generator'
        drg_opt['model_file'] = path + '.drg'
        drg_opt['ppg_model_file'] = path + '.ppg'
        drg_opt['init_model'] = None
        drg_opt.save(path + '.drg.opt')
        self.dict.save(path + '.drg.dict', sort=False)

    # the RL step
    def _sample(self, agent, sources: Sequence[str], max_len: int) -> Rollout:
        """Vectorised sources and one decoded output each (no gradient), in eval mode."""
        rows = [
            agent._vectorize_text(s, truncate=agent.text_truncate, truncate_left=True)
            for s in sources
        ]
        source = pad_rows([r.tolist() for r in rows], agent.NULL_IDX)
        device = next(agent.model.parameters()).device
        source = source.to(device)
        model = getattr(agent.model, 'module', agent.model)  # unwrap DDP
        was_training = model.training
        model.eval()
        sample, log_probs = sample_sequences(
            getattr(model, 'seq2seq', model),
            source,
            agent.START_IDX,
            agent.END_IDX,
            max_len,
            banned=(agent.START_IDX, agent.NULL_IDX),
            greedy=self.opt.get('rl_decoding') == 'greedy',
            top_k=self.opt.get('rl_top_k') or 0,
            temperature=self.opt.get('rl_temperature') or 1.0,
            with_log_probs=True,
        )
        model.train(was_training)
        texts = [agent._v2t(row) for row in sample.tolist()]
        return Rollout(source, sample, texts, log_probs.sum(-1))

    @staticmethod
    def _teacher_forced_logits(model, source: torch.Tensor, sample: torch.Tensor):
        """Logits of ``sample`` given ``source`` (teacher forcing), through the same output
        function the sampler drew from (:func:`sample_sequences`): ``seq2seq.logits`` with
        START and NULL banned, in fp32, for the encoder-decoder; ParlAI's
        ``model(source, ys=sample)`` (whose ``output`` the sampler calls) for a decoder-only
        generator."""
        if not hasattr(model, 'seq2seq'):
            scores, *_ = model(source, ys=sample)
            return scores
        hidden, _ = model.seq2seq(source, decoder_input(sample, model.START_IDX))
        logits = model.seq2seq.logits(hidden).float()
        banned = torch.tensor([model.START_IDX, model.NULL_IDX], device=logits.device)
        return logits.index_fill(-1, banned, float('-inf'))  # never produced (as sampled)

    def rl_loss(self, observations: Sequence[Message]) -> tuple[torch.Tensor, dict]:
        """Sample p̂ and r̂, reward them with the critic, return the REINFORCE loss (§3.3).

        The log-probabilities are recomputed (with gradient) in the mode the samples were
        drawn in, eval (no dropout): with dropout on they would be another policy's, and the
        update off-policy.
        """
        if self.critic is None:
            self._load_critic()
        ppg = self.persona_generator
        ppg_sources = [ppg_source(o['context'], o['self_persona']) for o in observations]
        persona = self._sample(ppg, ppg_sources, self.opt.get('rl_persona_max_len', 64))
        drg_sources = [
            drg_source(o['context'], o['self_persona'], p)
            for o, p in zip(observations, persona.texts)
        ]
        response = self._sample(self, drg_sources, self.opt.get('rl_response_max_len', 32))
        device = response.source.device
        # the critic scores (generated partner personas p̂, generated response r̂) (§3.3)
        probability = self.critic.positive_probability(persona.texts, response.texts).to(device)
        rewards = critic_rewards(
            probability, self.opt.get('reward_type', 'label'), self.opt.get('reward_scale', 1.0)
        )
        normalise = self.opt.get('rl_normalise', 'mean')
        train = self.opt.get('rl_train', 'both')
        was_training = self.model.training
        self.model.eval()  # the sampling mode (see above); gradients still flow
        loss = torch.zeros((), device=device)
        recomputed = {}
        parts = (
            ('drg', getattr(self.model, 'module', self.model), response, self.NULL_IDX),
            ('ppg', ppg.model, persona, ppg.NULL_IDX),
        )
        for name, model, rollout, pad in parts:
            if train not in ('both', name):
                continue
            # the bare model, not DDP's forward: see train_step
            logits = self._teacher_forced_logits(model, rollout.source, rollout.sample)
            loss = loss + generator_reinforce_loss(logits, rollout.sample, rewards, pad, normalise)
            per_token, mask = sequence_log_probs(logits.detach(), rollout.sample, pad)
            recomputed[name] = (per_token * mask).sum(-1)
        self.model.train(was_training)
        info = {
            'rewards': rewards,
            'probability': probability,
            'personas': persona.texts,
            'responses': response.texts,
            'persona_len': (persona.sample != ppg.NULL_IDX).sum(-1).float(),
            'response_len': (response.sample != self.NULL_IDX).sum(-1).float(),
            'persona_rollout': persona,
            'response_rollout': response,
            'recomputed_log_prob': recomputed,
        }
        return loss, info

    def batchify(self, obs_batch, sort: bool = False) -> Batch:
        batch = super().batchify(obs_batch, sort)
        if batch.valid_indices is not None:  # the structured fields the RL step needs
            batch['ppg_observations'] = [obs_batch[int(i)] for i in batch.valid_indices]
        return batch

    def train_step(self, batch: Batch) -> Output:
        observations = batch.get('ppg_observations') or []
        if not observations:
            return Output()
        if any('context' not in o or 'self_persona' not in o for o in observations):
            raise ValueError('ppg_rl needs the context/self_persona fields of -t ppg_ext')
        self.zero_grad()
        loss, info = self.rl_loss(observations)
        self.backward(loss)
        # the log-probabilities came from the bare generators, not DDP's forward: average the
        # gradients over the workers here (each worker's rewards are its own, no baseline)
        average_gradients(self.model.parameters())
        self.update_params()
        self.record_local_metric('rl_loss', AverageMetric.many([loss.item()] * len(observations)))
        self.record_local_metric('reward', AverageMetric.many(info['rewards'].tolist()))
        positive = (info['probability'] > 0.5).float().tolist()
        self.record_local_metric('critic_pos', AverageMetric.many(positive))
        self.record_local_metric('ppg_len', AverageMetric.many(info['persona_len'].tolist()))
        self.record_local_metric('drg_len', AverageMetric.many(info['response_len'].tolist()))
        return Output(info['responses'])

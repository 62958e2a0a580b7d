"""``parlai train_model --tensorboard-log true``: the event files hold the run's own reports.

ParlAI writes them with ``tensorboardX`` and ``tensorboard --logdir`` reads them; both come with
the ``tensorboard`` extra (also in ``test``; ``make install`` installs both). The files are read back here with
TensorBoard's own reader, and every logged value is compared with the ``.trainstats`` reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = dict(
    model='unified_transformer', n_layers=1, embedding_size=16, n_heads=2, ffn_size=32,
    dropout=0.0, task='ext_demo', batchsize=8, skip_generation=True,
)  # fmt: skip


def test_tensorboard_log_writes_the_training_curves(tmp_path):
    from parlai.scripts.train_model import TrainModel
    from tensorboard.backend.event_processing import event_accumulator

    model_file = tmp_path / 'model'
    TrainModel.main(
        **TINY, model_file=str(model_file), tensorboard_log=True, max_train_steps=6,
        log_every_n_steps=2, validation_every_n_steps=3, validation_metric='ppl',
        validation_metric_mode='min',
    )  # fmt: skip
    stats = json.loads(Path(f'{model_file}.trainstats').read_text())
    logdir = Path(f'{model_file}.tensorboard')  # ParlAI's default --tensorboard-logdir
    assert len(list(logdir.glob('events.out.tfevents.*'))) == 1

    events = event_accumulator.EventAccumulator(str(logdir))
    events.Reload()
    # train points keyed by the update count logged with them (ParlAI flushes the writer only
    # after a validation, so the last train log may still sit in its buffer in this process)
    logged = {
        int(updates.value): loss.value
        for updates, loss in zip(
            events.Scalars('total_train_updates/train'), events.Scalars('loss/train'), strict=True
        )
    }
    reports = {r['total_train_updates']: r['loss'] for r in stats['train_reports']}
    assert len(logged) >= 2 and set(logged) <= set(reports)
    assert logged == pytest.approx({k: reports[k] for k in logged}, rel=1e-6)
    steps = [e.step for e in events.Scalars('loss/train')]
    assert steps == sorted(set(steps)) and steps[-1] <= 6  # one point per log, in step order
    valid_ppl = [e.value for e in events.Scalars('ppl/valid')]
    assert len(valid_ppl) >= 1
    assert valid_ppl == pytest.approx([r['ppl'] for r in stats['valid_reports']], rel=1e-6)

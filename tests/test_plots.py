"""The plots of the ``projects/*/summarize.py`` scripts (``parlai_ext/plots.py``).

The readers against tiny run files in the formats the runs write (ParlAI's ``.trainstats``
and ``train_model`` log, P2Bot's self-play ``.jsonl``, ``eval_model --world-logs``, the
GMM/LGM ``pi_k`` report metrics), the figures by their lines / bars and their data, and the
PNG files by their pixel size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image  # the plots extra (also in test; make install installs it)
import pytest

from parlai_ext import plots

ROOT = Path(__file__).resolve().parents[1]


def _summarize(system: str):
    """``projects/<system>/summarize.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        f'summarize_{system}', ROOT / 'projects' / system / 'summarize.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainstats(path: Path, reports: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({'train_steps': reports[-1]['train_steps'], 'train_reports': reports})
    )


def _train_log(path: Path, reports: list[tuple[int, dict]], cut: str = '') -> None:
    """A ``train_model`` log as ParlAI writes it without pandas; ``cut``: a last partial line."""
    lines = ['2026-12-05 11:23:25,718 INFO     | creating task(s): ext_demo']
    for steps, report in reports:
        lines.append(
            f'2026-12-05 11:23:36,596 INFO     | time:23s total_exs:{8 * steps} '
            f'total_steps:{steps} epochs:0.00 time_left:117s'
        )
        lines.append(json.dumps(report))
        lines.append('')
    lines.append('2026-12-05 11:24:00,000 INFO     | valid:')
    lines.append(json.dumps({'exs': 32, 'reward': 99.0}))  # a validation report: not a point
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n' + cut)


def _png_size(path: Path) -> tuple[int, int]:
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    return width, height


# ------------------------------------------------------------------------------------ readers


def test_train_reports_from_trainstats_and_from_a_running_log(tmp_path):
    _trainstats(
        tmp_path / 'a.trainstats',
        [{'train_steps': 10, 'reward': 0.5}, {'train_steps': 20, 'critic_pos': 1.0},
         {'train_steps': 30, 'reward': float('nan')}, {'train_steps': 40, 'reward': 0.75}],
    )  # fmt: skip
    reports = plots.train_reports(tmp_path / 'a.trainstats')
    line = plots.series(reports, 'reward', 'R')
    assert (line.x, line.y) == ([10.0, 40.0], [0.5, 0.75])  # missing and NaN points left out
    # the log: total_steps of the line before each report; the validation report and the
    # cut last line (still being written) are no points
    _train_log(tmp_path / 'b.log', [(3, {'reward': 0.25}), (6, {'reward': -0.5})], cut='{"rew')
    line = plots.series(plots.train_reports(tmp_path / 'b.log'), 'reward', 'R')
    assert (line.x, line.y) == ([3.0, 6.0], [0.25, -0.5])


def test_a_broken_report_names_its_file_and_line(tmp_path):
    log = tmp_path / 'bad.log'
    log.write_text('x | time:1s total_exs:8 total_steps:1 epochs:0\n   loss  ppl\n   1.0  2.7\n\n')
    with pytest.raises(plots.PlotInputError, match=r'bad\.log:2: not a JSON report'):
        plots.train_reports(log)
    stats = tmp_path / 'bad.trainstats'
    stats.write_text('{"train_steps": 3}')
    with pytest.raises(plots.PlotInputError, match=r'bad\.trainstats:1: no train_reports'):
        plots.train_reports(stats)
    lines = tmp_path / 'bad.jsonl'
    lines.write_text('{"reward": 1}\n[1, 2]\n{"reward": 2}\n')
    with pytest.raises(plots.PlotInputError, match=r'bad\.jsonl:2: a JSON list'):
        plots.jsonl_records(lines)


def test_find_reports_names_runs_and_prefers_trainstats_over_logs(tmp_path):
    _trainstats(tmp_path / 'offp' / 'model.trainstats', [{'train_steps': 5, 'train_reward': 0.1}])
    _trainstats(tmp_path / 'ce' / 'model.trainstats', [{'train_steps': 5, 'loss': 3.0}])
    _trainstats(tmp_path / 'offp' / 'model.checkpoint.trainstats', [{'train_steps': 1}])
    _train_log(tmp_path / 'logs' / 'offp.train.log', [(2, {'train_reward': 9.0})])
    _train_log(tmp_path / 'logs' / 'mixp.train.log', [(2, {'train_reward': 0.3})])
    found = plots.find_reports(tmp_path, 'train_reward')
    assert sorted(found) == ['logs/mixp', 'offp']
    assert found['offp'][0]['train_reward'] == 0.1  # not the log's 9.0


def test_smooth_is_a_trailing_moving_mean():
    assert plots.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plots.smooth([1.0, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 3.0, 5.0]
    assert plots.smooth([4.0, 2.0], 1) == [4.0, 2.0]
    with pytest.raises(ValueError):
        plots.smooth([1.0], 0)


def test_chosen_latents_reads_the_chosen_candidate_of_each_reply(tmp_path):
    def reply(chosen: int, other: int) -> dict:
        return {
            'id': 'Plato2',
            'text': 'hi',
            'plato2_candidates': [  # the chosen one by its flag, not by its place
                {'text': 'yo', 'latent': other, 'chosen': False},
                {'text': 'hi', 'latent': chosen, 'chosen': True},
            ],
        }

    logs = tmp_path / 'world_logs.jsonl'
    episodes = [
        {'dialog': [[{'id': 'teacher', 'text': 'a'}, reply(3, 1)], [{'text': 'b'}, reply(3, 0)]]},
        {'dialog': [[{'id': 'teacher', 'text': 'c'}, reply(0, 3)]]},
    ]
    logs.write_text('\n'.join(json.dumps(e) for e in episodes) + '\n')
    assert plots.chosen_latents(logs) == [3, 3, 0]
    assert plots.counts([3, 3, 0], 4) == [1, 0, 0, 2]
    with pytest.raises(ValueError, match='latent id 4'):
        plots.counts([4], 4)


# ------------------------------------------------------------------------------------ figures


def test_curves_figure_draws_one_line_per_series_and_writes_its_png(tmp_path):
    panels = [
        plots.Panel('a', 'R', [plots.Series('x', [1, 2], [0.1, 0.2]), plots.Series('y', [1], [3])]),
        plots.Panel('b', 'R', [plots.Series('z', [1, 2, 3], [5, 6, 7]), plots.Series('e', [], [])]),
    ]
    fig = plots.curves_figure(panels)
    top, bottom = fig.axes
    assert [list(line.get_ydata()) for line in top.lines] == [[0.1, 0.2], [3]]
    assert [list(line.get_ydata()) for line in bottom.lines] == [
        [5, 6, 7]
    ]  # the empty one left out
    path = plots.save_png(fig, tmp_path / 'img' / 'curves.png')
    assert _png_size(path) == (640, 720)  # 6.4 x 3.6 inches per panel at 100 dpi
    assert not [p for p in path.parent.iterdir() if p.name != 'curves.png']  # no temporary left


def test_bars_figure_draws_one_bar_per_value():
    fig = plots.bars_figure([plots.BarPanel('z', 'share', [0.5, 0.25, 0.25], reference=1 / 3)])
    (ax,) = fig.axes
    assert [bar.get_height() for bar in ax.patches] == [0.5, 0.25, 0.25]
    assert [line.get_ydata()[0] for line in ax.lines] == [pytest.approx(1 / 3)]


def test_bars_figure_in_columns_keeps_one_axes_per_panel(tmp_path):
    panels = [plots.BarPanel(str(i), 'w', [float(i), 1.0]) for i in range(3)]
    fig = plots.bars_figure(panels, columns=2)
    assert [ax.get_title() for ax in fig.axes] == ['0', '1', '2']  # the empty 4th cell removed
    assert [ax.patches[0].get_height() for ax in fig.axes] == [0.0, 1.0, 2.0]
    assert _png_size(plots.save_png(fig, tmp_path / 'bars.png')) == (640, 720)  # 2 rows


# ------------------------------------------------------------------------ the summarize scripts


def _selfplay(out: Path, name: str, rewards: list[float]) -> None:
    lines = [
        {'update': i + 1, 'rs1': -r, 'rs2': 2 * r, 'rs3': 3 * r, 'reward': r, 'sp_reply_len': 5.0}
        for i, r in enumerate(rewards)
    ]
    (out / f'{name}.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))


def test_p2bot_reward_plot_from_the_selfplay_logs(tmp_path):
    _selfplay(tmp_path, 'sp', [1.0, 3.0, 5.0, 7.0])
    _selfplay(tmp_path, 'sp_rs1', [2.0, 2.0, 4.0, 4.0])
    # the RS.1 + RS.2 variant still training, without a .jsonl: read from its train log
    _train_log(tmp_path / 'logs' / 'sp_rs12.train.log', [(10, {'reward': 0.5, 'rs1': 0.1})])
    summarize = _summarize('p2bot')
    fig = summarize.reward_figure(tmp_path, smooth=2)
    total, parts = fig.axes
    by_label = {line.get_label(): list(line.get_ydata()) for line in total.lines}
    assert by_label == {
        '+ self-play, RS.1': [2.0, 2.0, 3.0, 4.0],
        '+ self-play, RS.1 + RS.2': [0.5],
        '+ self-play, RS.1 + RS.2 + RS.3 (P2Bot)': [1.0, 2.0, 4.0, 6.0],
    }
    assert list(total.lines[0].get_xdata()) == [1, 2, 3, 4]  # the update
    # RS.1, RS.2, RS.3 of P2Bot (rs1 = -R, rs2 = 2R, rs3 = 3R), smoothed the same way
    assert [list(line.get_ydata()) for line in parts.lines] == [
        [-1.0, -2.0, -4.0, -6.0], [2.0, 4.0, 8.0, 12.0], [3.0, 6.0, 12.0, 18.0],
    ]  # fmt: skip


def test_p2bot_summarize_cli_prints_its_tables_and_writes_the_png(tmp_path):
    _selfplay(tmp_path, 'sp', [0.5 * i for i in range(20)])
    img = tmp_path / 'img'
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'projects/p2bot/summarize.py'), str(tmp_path),
         '--plot-dir', str(img)],
        capture_output=True, text=True, check=True, env={**os.environ, 'OMP_NUM_THREADS': '1'},
    )  # fmt: skip
    # the existing table: 20 updates in blocks of 4, R of the first block = mean(0, .5, 1, 1.5)
    assert '| 1-4 | ' in proc.stdout and '| 0.750 | 5.0 |' in proc.stdout
    assert f'wrote {img / "p2bot_rewards.png"}' in proc.stdout
    assert _png_size(img / 'p2bot_rewards.png') == (640, 720)
    assert (img / 'p2bot_rewards.png').stat().st_size < 200_000


def test_coral_reward_plot_leaves_out_reports_without_negatives(tmp_path):
    _trainstats(
        tmp_path / 'offp' / 'model.trainstats',
        [{'train_steps': 10, 'train_reward': 0.4, 'reward_neg': 0.1, 'positive': 0.5},
         {'train_steps': 20, 'train_reward': 0.5, 'reward_neg': 0.2, 'positive': 0.5}],
    )  # fmt: skip
    _trainstats(
        tmp_path / 'offp_gt' / 'model.trainstats',
        [{'train_steps': 10, 'train_reward': 0.7, 'reward_neg': 0.0, 'positive': 1.0}],
    )  # fmt: skip
    _trainstats(tmp_path / 'ce' / 'model.trainstats', [{'train_steps': 10, 'loss': 2.0}])
    opt = {'reward_model_file': str(tmp_path / 'xenc' / 'model')}
    (tmp_path / 'offp' / 'model.opt').write_text(json.dumps(opt))
    fig = _summarize('coral').reward_figure(tmp_path)
    trained, negatives = fig.axes
    assert trained.get_ylabel() == 'R3 (xenc)'  # the training reward model of the runs
    assert {line.get_label(): list(line.get_ydata()) for line in trained.lines} == {
        'CORAL off-policy (random negatives)': [0.4, 0.5],
        'CORAL off-policy (ground truth only, p+ = 1)': [0.7],
    }
    assert [list(line.get_ydata()) for line in negatives.lines] == [[0.1, 0.2]]


def test_ppg_reward_plot_from_the_rl_log(tmp_path):
    _train_log(
        tmp_path / 'logs' / 'rl.train.log',
        [(4, {'reward': -0.5, 'critic_pos': 0.25}), (8, {'reward': 0.5, 'critic_pos': 0.75})],
    )
    reward, positive = _summarize('ppg').reward_figure(tmp_path).axes
    assert list(reward.lines[0].get_xdata()) == [4, 8]
    assert list(reward.lines[0].get_ydata()) == [-0.5, 0.5]
    assert list(positive.lines[0].get_ydata()) == [0.25, 0.75]
    assert _summarize('ppg').reward_figure(tmp_path / 'nothing') is None


def test_multiref_weights_plot_one_panel_per_mixture_run(tmp_path):
    lgm = tmp_path / 'vhred_lgm.hyp'
    lgm.mkdir()
    (lgm / 'valid.json').write_text(
        json.dumps({'report': {'pi_0': 0.5, 'pi_1': 0.125, 'pi_2': 0.375, 'pi_max': 0.6}})
    )
    gmm = tmp_path / 'vhred_gmm.gt'
    gmm.mkdir()
    (gmm / 'valid.json').write_text(json.dumps({'report': {'pi_0': 0.9, 'pi_1': 0.1}}))
    (gmm / 'component_weights.json').write_text(json.dumps({'pi_mean': [0.75, 0.25]}))
    (tmp_path / 'vhred.hyp').mkdir()
    (tmp_path / 'vhred.hyp' / 'valid.json').write_text(json.dumps({'report': {'ppl': 9.0}}))
    (tmp_path / 'vhred_lgm_authors.hyp').mkdir()
    (tmp_path / 'vhred_lgm_authors.hyp' / 'component_weights.json').write_text(
        '{"pi_mean": [1, 0]}'
    )
    fig = _summarize('multiref').weights_figure(str(tmp_path))
    assert [ax.get_title() for ax in fig.axes] == [
        'VHRED-GMM5, 1 GT', 'VHRED-LGM5, 5 hyp', 'vhred_lgm_authors.hyp'
    ]  # fmt: skip
    heights = [[bar.get_height() for bar in ax.patches] for ax in fig.axes]
    assert heights == [[0.75, 0.25], [0.5, 0.125, 0.375], [1.0, 0.0]]  # the .json first
    assert [ax.lines[0].get_ydata()[0] for ax in fig.axes] == [0.5, pytest.approx(1 / 3), 0.5]


def test_plato2_latent_plot_shows_shares(tmp_path):
    usage = {'k': 4, 'posterior': [2, 0, 6, 0], 'posterior_examples': 8, 'chosen': [0, 1, 1, 0],
             'chosen_replies': 2}  # fmt: skip
    posterior, chosen = _summarize('plato2').latent_figure(usage).axes
    assert [bar.get_height() for bar in posterior.patches] == [0.25, 0, 0.75, 0]
    assert [bar.get_height() for bar in chosen.patches] == [0, 0.5, 0.5, 0]
    assert '8 validation examples' in posterior.get_title()
    assert len(_summarize('plato2').latent_figure({**usage, 'chosen': None}).axes) == 1


def test_plato2_measure_counts_posterior_and_reranked_latents(tmp_path):
    from test_demo import tiny_plato2

    model = tiny_plato2(tmp_path, n_latent=4)
    usage = _summarize('plato2').measure(model, 8, 2, scratch=str(tmp_path))
    assert usage['k'] == 4 and len(usage['posterior']) == len(usage['chosen']) == 4
    assert sum(usage['posterior']) == usage['posterior_examples'] == 8  # one argmax per example
    assert sum(usage['chosen']) == usage['chosen_replies'] == 2  # one reply per context


def test_plato2_summarize_plots_the_recipe_world_log_without_measuring(tmp_path, monkeypatch):
    (tmp_path / 'stage21.opt').write_text(json.dumps({'n_latent': 4, 'task': 'ext_demo'}))
    reply = {'plato2_candidates': [{'latent': 2, 'chosen': True}, {'latent': 1, 'chosen': False}]}
    lines = [{'dialog': [[{'text': 'a'}, reply]]}] * 3
    (tmp_path / 'gen_stage21.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    (tmp_path / 'gen_stage21_report.json').write_text(json.dumps({'report': {'exs': 3}}))
    summarize = _summarize('plato2')
    saved = []
    monkeypatch.setattr(summarize.plots, 'save_png', lambda fig, path: saved.append(fig) or path)
    monkeypatch.setattr(sys, 'argv', ['summarize.py', str(tmp_path), '--plot-dir', 'img'])
    summarize.main()
    (fig,) = saved
    (chosen,) = fig.axes  # no latent_usage.json: the reranked replies only
    assert [bar.get_height() for bar in chosen.patches] == [0, 0, 1.0, 0]
    assert '3 contexts' in chosen.get_title()

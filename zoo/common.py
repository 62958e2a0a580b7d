"""Offline model zoo: ``zoo:<system>/<entry>/<file>`` names served from files the package ships.

ParlAI resolves ``-mf zoo:plato2/dailydialog_smollm2/model`` by importing
``parlai.zoo.plato2.dailydialog_small`` (or ``parlai.zoo.plato2.build``) and calling its
``download(datapath)``, then reading ``<datapath>/models/plato2/dailydialog_smollm2/model``.
The start-up hook maps ``parlai.zoo.<system>`` onto ``parlai_ext.zoo.<system>`` for the names in
:data:`parlai_ext.registry.ZOO`; ``download`` here copies the shipped files into the data
folder (no network), once per version, each file atomically. An entry whose files are not in
the package (too big to ship) stops with the command that builds it locally; a name that is not
an entry (``zoo:plato2/no_such/model``) stops before anything is installed, listing the entries
that exist (:func:`check_zoo_name`, called by compat fix 15 from ParlAI's ``modelzoo_path``).
"""

from __future__ import annotations

import io
import os

from parlai_ext.io import atomic_copy, atomic_open, atomic_write


class ZooEntryMissing(FileNotFoundError):
    """A zoo entry's files are neither shipped nor built locally."""


class ZooNameUnknown(FileNotFoundError):
    """A ``zoo:<system>/...`` name of one of our systems that is not one of its entries."""


def zoo_entries() -> dict[str, list[str]]:
    """``{system: ['zoo:<system>/<entry>/<file>', ...]}`` for every file our zoo serves."""
    import importlib

    from parlai_ext import registry

    entries = {}
    for system, package in sorted(registry.ZOO.items()):
        build = importlib.import_module(f'{package}.build')
        entries[system] = [f'zoo:{system}/{build.ENTRY}/{name}' for name in build.FILES]
    return entries


def zoo_listing() -> str:
    """The models (files with an ``.opt``) of our zoo, one ``zoo:`` name each, comma-separated."""
    names = []
    for files in zoo_entries().values():
        present = set(files)
        names += [n for n in files if n + '.opt' in present and not n.endswith('.dict')]
    return ', '.join(names)


def check_zoo_name(path: str) -> None:
    """Raise :class:`ZooNameUnknown` if ``path`` names one of our systems but no entry of it.

    Names of other systems (ParlAI's own zoo) pass unchanged.
    """
    from parlai_ext import registry

    name = path.split(':', 1)[1]
    parts = name.split('/')
    if parts[0] not in registry.ZOO:
        return
    files = zoo_entries()[parts[0]]
    entries = {f.rsplit('/', 1)[0] for f in files}
    prefix = path.split(':', 1)[0]
    normalised = 'zoo:' + name
    if normalised in files or (len(parts) == 2 and normalised in entries):
        return
    models = [f for f in files if f + '.opt' in set(files) and not f.endswith('.dict')]
    raise ZooNameUnknown(
        f'{path}: no such entry in the parlai-ext zoo (nothing was installed). Models of '
        f'{prefix}:{parts[0]}: {", ".join(models)}; all models: {zoo_listing()}'
    )


def shipped_folder(package_file: str, entry: str) -> str:
    """The folder holding ``entry``'s files next to the zoo module ``package_file``."""
    return os.path.join(os.path.dirname(os.path.abspath(package_file)), entry)


def install_entry(
    datapath: str,
    system: str,
    entry: str,
    source: str,
    files: list[str],
    version: str,
    build_command: str,
) -> str:
    """Copy ``files`` from ``source`` to ``<datapath>/models/<system>/<entry>`` (once per version).

    :param build_command: how to make the files when they are absent (said in the error).
    :return: the installed folder.
    """
    from parlai.core.build_data import built, mark_done

    target = os.path.join(datapath, 'models', system, entry)
    if built(target, version) and all(os.path.exists(os.path.join(target, f)) for f in files):
        return target
    missing = [f for f in files if not os.path.isfile(os.path.join(source, f))]
    if missing:
        raise ZooEntryMissing(
            f'zoo:{system}/{entry} is not available offline: {", ".join(missing)} missing in '
            f'{source}. Nothing is downloaded; build it locally with\n    {build_command}\n'
            f'and copy the files listed above into {source} (or into {target}).'
        )
    os.makedirs(target, exist_ok=True)
    for name in files:
        atomic_copy(os.path.join(source, name), os.path.join(target, name))
    mark_done(target, version)
    return target


# options that hold paths or times of the training machine: not part of a shipped model
_LOCAL_OPTIONS = ('model_file', 'dict_file', 'init_model', 'datapath', 'parlai_home', 'starttime')


def export_model(
    model_file: str, target_dir: str, name: str, half: bool = True, **option_overrides
) -> str:
    """Write ``model_file`` as the zoo files ``<target_dir>/<name>{,.opt,.dict,...}``.

    Keeps only the weights (no optimizer or scheduler state), as float16 when ``half`` (they are
    loaded back into the float32 model; the model card's numbers are measured on these files),
    drops the training machine's paths from the options (the dictionary is then found as
    ``<name>.dict`` next to the model) and sets ``option_overrides`` (e.g. a zoo path for
    PLATO-2's ``evaluator_model_file``).
    """
    import json

    import torch

    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, name)
    states = torch.load(model_file, map_location='cpu', weights_only=False)
    weights = {
        key: value.half() if half and value.is_floating_point() else value
        for key, value in states['model'].items()
    }
    buffer = io.BytesIO()
    torch.save({'model': weights}, buffer)
    atomic_write(target, buffer.getvalue())
    with open(model_file + '.opt') as handle:
        opt = json.load(handle)
    opt = _without_local_paths(opt, option_overrides)
    with atomic_open(target + '.opt', 'w') as handle:
        json.dump(opt, handle, indent=2, sort_keys=True)
    dict_file = model_file + '.dict'
    for suffix in ('', '.spm.model'):
        if os.path.exists(dict_file + suffix):
            atomic_copy(dict_file + suffix, target + '.dict' + suffix)
    if os.path.exists(dict_file + '.opt'):  # the dictionary's options: the run's, cleaned too
        with open(dict_file + '.opt') as handle:
            dict_opt = _without_local_paths(json.load(handle), {})
        with atomic_open(target + '.dict.opt', 'w') as handle:
            json.dump(dict_opt, handle, indent=2, sort_keys=True)
    return target


def _without_local_paths(opt: dict, option_overrides: dict) -> dict:
    """``opt`` without the training machine's paths and times, with ``option_overrides`` set."""
    for key in _LOCAL_OPTIONS:
        opt.pop(key, None)
    override = {k: v for k, v in opt.get('override', {}).items() if k not in _LOCAL_OPTIONS}
    override.update(option_overrides)
    opt['override'] = override
    opt.update(option_overrides)
    for key, value in list(opt.items()):  # other local paths (data folders, files, logs)
        if key in option_overrides or not isinstance(value, str) or '/' not in value:
            continue
        if os.path.isabs(value) or value.startswith('.') or os.path.exists(value):
            opt.pop(key)
            opt['override'].pop(key, None)
    return opt


if __name__ == '__main__':
    import argparse
    import json

    parser = argparse.ArgumentParser(description='Export a trained model as zoo files.')
    parser.add_argument('model_file')
    parser.add_argument('target_dir')
    parser.add_argument('name')
    parser.add_argument('--float32', action='store_true', help='keep float32 weights')
    parser.add_argument(
        '--set', nargs='*', default=[], metavar='KEY=VALUE', help='option values (JSON or text)'
    )
    args = parser.parse_args()
    overrides = {}
    for item in args.set:
        key, value = item.split('=', 1)
        try:
            overrides[key] = json.loads(value)  # false, 0.9, ...
        except json.JSONDecodeError:
            overrides[key] = value
    print(export_model(args.model_file, args.target_dir, args.name, not args.float32, **overrides))

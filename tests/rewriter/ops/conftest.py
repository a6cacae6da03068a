"""Make ``rewriter`` and the sibling ``helpers`` module importable however pytest is started.

The project is not installed into the virtualenv and this folder has no ``__init__.py``, so the
test modules import ``helpers`` by its bare name, as ``tests/rewriter`` does with
``sample_upstream``. (``tests/conftest.py`` also puts the repository root on ``sys.path``; doing
it here too keeps ``pytest tests/rewriter/ops`` working on its own.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

for path in (ROOT, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# show full diffs for the asserts made inside the shared helpers, as in the test modules
pytest.register_assert_rewrite("helpers")

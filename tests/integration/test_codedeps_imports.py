"""Each stage's import closure (pico.codedeps) covers what Python really imports when the stage module loads (a fresh interpreter per stage)."""

import json
import subprocess
import sys

import pytest

from pico import codedeps
from tests.helpers import REPO


@pytest.mark.parametrize("stage", list(codedeps.STAGE_MODULES))
def test_closure_covers_what_python_imports(stage):
    # run the stage module's imports in a fresh interpreter: every pico module it loads must be in
    # the static closure (which also sees the imports inside functions, that this does not)
    module = codedeps.STAGE_MODULES[stage]
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'pico')))"
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    )
    assert set(loaded) <= set(codedeps.closure(module))

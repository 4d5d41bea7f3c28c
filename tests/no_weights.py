"""Run code in a fresh process in which loading model weights raises.

A rerun on cached activations and stage files must read files only: the tests that say "a rerun
loads no model" run the experiment again through `run_without_weights`.
"""

import json
import subprocess
import sys

from tests.conftest import REPO

_GUARD = '''
import json, sys
import lab.models
def refuse(*a, **k):
    raise AssertionError("model weights were loaded")
lab.models.load_model = refuse
lab.models.LabModel.hf = property(refuse)
'''

# the last line `body` may print: which transformers modeling modules were imported (none, if no model was built)
PRINT_MODELING = ('print(json.dumps({"modeling": [m for m in sys.modules if m.startswith("transformers.models.") '
                  'and ".modeling_" in m and ".auto." not in m]}))')


def run_without_weights(body: str) -> tuple[str, object]:
    """Run `body` (Python source) with weight loading refused; returns (stdout, its last line parsed as JSON)."""
    out = subprocess.run([sys.executable, "-c", _GUARD + body], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, json.loads(out.stdout.strip().splitlines()[-1])

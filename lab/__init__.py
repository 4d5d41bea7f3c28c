"""emlab: an interpretability lab for emergent misalignment, on TransformerLens.

Data flows one way: data -> models -> cache -> directions -> experiments -> reports.
"""

import os

# On small CPU machines torch's busy-waiting OpenMP threads make forwards randomly 5-20x
# slower; this must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.2.0"

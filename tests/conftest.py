import os
import sys

# Tests import the packages from the repo root (they are also installed in editable mode).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The compile cache (on by default for torch.compile) writes to a folder of this run, not the
# user's ~/.cache/ember.
if "EMBER_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["EMBER_CACHE_DIR"] = tempfile.mkdtemp(prefix="ember-test-cache-")

import os
import sys

# Tests import the packages from the repo root (they are also installed in editable mode).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

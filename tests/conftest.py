import sys
from pathlib import Path

# Let tests import the top-level entry scripts (hv_train_network.py, ...) as modules.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

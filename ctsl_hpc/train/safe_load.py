"""Reading what this package saved with ``torch.save`` without running code: tensors-only unpickling.

Checkpoint files (the engines' and the trainer's) hold plain containers, numbers and tensors, plus
numpy's RNG state; :func:`load_state` loads exactly these (``weights_only``) and refuses anything
else in the file (a pickled object that would run code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

# what numpy.random.get_state() pickles to (an ndarray of the MT19937 keys)
NUMPY_RNG_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np._core.multiarray._reconstruct]


def load_state(path: Path, map_location: Any = "cpu") -> Any:
    """A file this package saved with ``torch.save``, loaded tensors-only (``weights_only``): plain
    containers, numbers and tensors, plus the numpy types of numpy's RNG state. Anything else in it
    (a pickled object that would run code) is refused."""
    with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)

"""How engines store fp32 results in narrower types."""
from __future__ import annotations

import numpy as np

from simulator.isa import DType


def store_cast(x: np.ndarray, dtype: DType) -> np.ndarray:
    """fp32 values as the engine stores them in ``dtype``: bf16/fp16 round to nearest even
    (ml_dtypes / numpy), int8/int32 round half to even and saturate."""
    if dtype in (DType.INT8, DType.INT32):
        info = np.iinfo(dtype.np)
        return np.clip(np.rint(x.astype(np.float64)), info.min, info.max).astype(dtype.np)
    return x.astype(dtype.np)

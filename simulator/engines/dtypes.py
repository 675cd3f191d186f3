"""How engines store fp32 results in narrower types."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from simulator.isa import DType


def store_cast(x: np.ndarray, dtype: DType) -> np.ndarray:
    """fp32 values as the engine stores them in ``dtype``: bf16/fp16 round to nearest even
    (ml_dtypes / numpy), int8/int32 round half to even and saturate, fp8 (e4m3) rounds to nearest
    even and saturates at its largest finite value, 448 (it has no infinities; a plain cast would
    make NaNs of what overflows)."""
    if dtype in (DType.INT8, DType.INT32):
        info = np.iinfo(dtype.np)
        return np.clip(np.rint(x.astype(np.float64)), info.min, info.max).astype(dtype.np)
    if dtype is DType.FP8:
        top = float(ml_dtypes.finfo(dtype.np).max)
        return np.clip(x.astype(np.float32), -top, top).astype(dtype.np)
    return x.astype(dtype.np)

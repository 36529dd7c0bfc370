#!/usr/bin/python3
"""Writes the NumPy .npz fixtures of tests/unit/test_npz_import.cpp (real numpy output: ZIP64
extra fields, stored and deflated members). Regenerate with Debian's numpy:

    /usr/bin/python3 tests/data/npz/make_fixtures.py tests/data/npz

conv.weight = arange(8) / 8 shaped (2, 1, 2, 2), conv.bias = [0.5, -0.25] (float64),
fc.weight = arange(6) / 4 - 0.5 shaped (3, 2), fc.bias = [1, 2, 3].
"""
import os
import sys

import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
arrays = {
    "conv.weight": (np.arange(8, dtype=np.float32) / 8).reshape(2, 1, 2, 2),
    "conv.bias": np.array([0.5, -0.25], dtype=np.float64),
    "fc.weight": (np.arange(6, dtype=np.float32) / 4 - 0.5).reshape(3, 2),
    "fc.bias": np.array([1, 2, 3], dtype=np.float32),
}
np.savez(os.path.join(out, "stored.npz"), **arrays)
np.savez_compressed(os.path.join(out, "deflated.npz"), **arrays)
# Arrays bitgrad does not take: int64, big-endian float32, float16, Fortran order.
np.savez(os.path.join(out, "dtypes.npz"),
         int64=np.arange(3, dtype=np.int64),
         big_endian=np.arange(3, dtype=">f4"),
         half=np.arange(3, dtype=np.float16),
         fortran=np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))

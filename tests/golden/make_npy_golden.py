#!/usr/bin/python3
"""make_npy_golden.py: .npy files written by numpy itself, for tests/test_npy.c.

Writes, into tests/golden/npy/ (next to this script):
  <code>_2x3.npy    for code in f4 f8 f2 i4 i8 u2 u1: np.save of the (2, 3) array
                    v[i] = (i - 2) * 0.5 for floats, (i - 2) * 7 for signed ints,
                    i * 1000 for u2 and i * 40 for u1 (i = 0..5, row-major).
                    dm_npy_save of the same values must give the same bytes.
  f4_3d.npy         (2, 3, 4) float32, v[i] = i
  f4_1d.npy         (5,) float32, v[i] = i + 0.25
  f4_scalar.npy     () float32, 3.5
  f4_empty.npy      (0, 3) float32
  f4_v2.npy         the f4_2x3 array as format version 2.0
  f4_v3.npy         the f4_2x3 array as format version 3.0
  bf16_2x3.npy      '|V2' (how ml_dtypes' bfloat16 saves): the bf16 bits of the
                    f4_2x3 values (all exact in bfloat16)
  f4_fortran.npy    the f4_2x3 array in Fortran order      (must be refused)
  f4_bigendian.npy  the f4_2x3 array as '>f4'              (must be refused)
  c8_2x3.npy        complex64                              (must be refused)
  f4_5d.npy         shape (1, 1, 1, 2, 1)                  (must be refused)
  structured.npy    dtype [('a', '<f4')]                   (must be refused)

Deterministic and tiny (under 2 KB each). Run from anywhere:
    /usr/bin/python3 tests/golden/make_npy_golden.py
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "npy")


def path(name):
    return os.path.join(OUT, name)


def main():
    os.makedirs(OUT, exist_ok=True)
    i = np.arange(6)
    values = {
        "f4": ((i - 2) * 0.5).astype("<f4"),
        "f8": ((i - 2) * 0.5).astype("<f8"),
        "f2": ((i - 2) * 0.5).astype("<f2"),
        "i4": ((i - 2) * 7).astype("<i4"),
        "i8": ((i - 2) * 7).astype("<i8"),
        "u2": (i * 1000).astype("<u2"),
        "u1": (i * 40).astype("|u1"),
    }
    for code, v in values.items():
        np.save(path(f"{code}_2x3.npy"), v.reshape(2, 3))
    f4 = values["f4"].reshape(2, 3)

    np.save(path("f4_3d.npy"), np.arange(24, dtype="<f4").reshape(2, 3, 4))
    np.save(path("f4_1d.npy"), np.arange(5, dtype="<f4") + np.float32(0.25))
    np.save(path("f4_scalar.npy"), np.array(3.5, dtype="<f4"))
    np.save(path("f4_empty.npy"), np.zeros((0, 3), dtype="<f4"))
    for major in (2, 3):
        with open(path(f"f4_v{major}.npy"), "wb") as f:
            np.lib.format.write_array(f, f4, version=(major, 0))

    bits = (f4.view("<u4") >> 16).astype("<u2")
    assert np.array_equal((bits.astype("<u4") << 16).view("<f4"), f4)
    np.save(path("bf16_2x3.npy"), np.frombuffer(bits.tobytes(), dtype="V2").reshape(2, 3))

    np.save(path("f4_fortran.npy"), np.asfortranarray(f4))
    np.save(path("f4_bigendian.npy"), f4.astype(">f4"))
    np.save(path("c8_2x3.npy"), f4.astype("<c8"))
    np.save(path("f4_5d.npy"), np.zeros((1, 1, 1, 2, 1), dtype="<f4"))
    np.save(path("structured.npy"), np.zeros(2, dtype=[("a", "<f4")]))


if __name__ == "__main__":
    main()

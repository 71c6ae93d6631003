"""Writes a weight delta file (models/onnx.ReadDelta): tuned minus base, float16."""
import sys

import numpy as np
import onnx
from onnx import numpy_helper

MAGIC = b"ATM-ONNX-DELTA-F16\n"


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_delta(base_path, tuned_path, out_path):
    base = {i.name: numpy_helper.to_array(i) for i in onnx.load(base_path).graph.initializer}
    tuned = {i.name: numpy_helper.to_array(i) for i in onnx.load(tuned_path).graph.initializer}
    out = bytearray(MAGIC)
    n = 0
    for name in sorted(tuned):
        d = (tuned[name].astype(np.float32) - base[name].astype(np.float32)).ravel()
        if not np.any(d):
            continue
        h = d.astype("<f2")
        if not np.all(np.isfinite(h)):
            raise SystemExit(f"{name}: the delta overflows float16")
        nb = name.encode()
        out += uvarint(len(nb)) + nb + uvarint(len(h)) + h.tobytes()
        n += 1
    with open(out_path, "wb") as f:
        f.write(bytes(out))
    print(f"{out_path}: {n} initializers, {len(out)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: delta.py BASE.onnx TUNED.onnx OUT.delta")
    write_delta(*sys.argv[1:4])

"""Compare two GGUF files tensor by tensor (name, type, shape, bytes) and key by key.

Keys that name the producer or its version (general.* naming keys) are reported, not failed.
Exit status 1 on any tensor or model-key difference.
"""

import sys

import numpy as np
from gguf import GGUFReader

INFORMATIONAL = ("general.name", "general.basename", "general.size_label", "general.finetune", "general.type",
                 "general.organization", "general.license", "general.languages", "general.version")


def fields(r):
    out = {}
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        out[f.name] = (f.types[0].name, f.contents())
    return out


def main(a_path, b_path):
    a, b = GGUFReader(a_path), GGUFReader(b_path)
    ok = True
    fa, fb = fields(a), fields(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            tag = "info" if k in INFORMATIONAL else "DIFF"
            ok &= tag == "info"
            va, vb = (str(x)[:80] if x else None for x in (fa.get(k), fb.get(k)))
            print(f"  key {tag}: {k}: {va} vs {vb}")
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    if set(ta) != set(tb):
        ok = False
        print(f"  tensor names differ: {sorted(set(ta) ^ set(tb))}")
    same = 0
    for n in sorted(set(ta) & set(tb)):
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape) or not np.array_equal(x.data.view(np.uint8), y.data.view(np.uint8)):
            ok = False
            print(f"  tensor DIFF: {n}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}")
        else:
            same += 1
    print(f"  {same}/{len(ta)} tensors identical (type, shape, bytes); {len(fa)} vs {len(fb)} keys")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

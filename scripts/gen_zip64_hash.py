"""Expected SHA-256 of the `.pth` file in convert/src/write/pth.rs `zip64_file_matches_torch`:
what torch.save writes for the same dict (a record over 4 GiB and records past the 4 GiB
offset, i.e. ZIP64). Needs torch (the heavy venv: scripts/pyenv.sh --heavy) and writes a 4 GiB
temporary file (TMPDIR), holding 4 GiB in memory for the zero tensor.

    HASH="$("$PY" scripts/gen_zip64_hash.py)"
    QFORGE_ZIP64_SHA256="$HASH" cargo test --release -p qforge-convert --lib -- --ignored zip64

The tensors mirror the Rust test's: "a" = pattern(12 bytes, seed 0) as 3 float32, "big" =
2**32 + 100 zero bytes (uint8), "c" = pattern(20 bytes, seed 2) as 5 float32, where
pattern(n, seed)[i] = (31·i + 7 + seed) mod 256 (convert/src/write/pth.rs `pattern`).
The archive's root name comes from the file name, "zip64".
"""

import hashlib
import os
import tempfile

import torch


def pattern(n: int, seed: int) -> bytearray:
    return bytearray((31 * i + 7 + seed) % 256 for i in range(n))


def main() -> None:
    a = torch.frombuffer(pattern(12, 0), dtype=torch.float32)
    c = torch.frombuffer(pattern(20, 2), dtype=torch.float32)
    big = torch.zeros(2**32 + 100, dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "zip64.pth")
        torch.save({"a": a, "big": big, "c": c}, path)
        del big
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    print(h.hexdigest())


if __name__ == "__main__":
    main()

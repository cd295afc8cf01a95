"""The sentencepiece library on the SentencePiece `tokenizer.model` qforge writes for Meta output.

tests/meta_spm.rs checks qforge's own readings of it; here the library itself loads what qforge
wrote. A Meta Llama 2-style checkpoint (the llama32 family fixture's weights with
tests/fixtures/spm/tokenizer.model, a BPE model sentencepiece trained with Llama 2's settings) is
converted to HF and to GGUF, and each back to Meta; `SentencePieceProcessor` on every written
`tokenizer.model` must encode each of the fixture's 47 strings (Hamlet's eval.txt and llama.cpp's
llama-spm test strings) to the ids it gives with the original file (BOS first, as Meta's
generation.py encodes), and report the same pieces and special ids.

Needs sentencepiece (pinned in the interop venv, so CI runs it): skipped otherwise.
"""

import json
import shutil
import subprocess

import pytest

spm = pytest.importorskip("sentencepiece", reason="sentencepiece not installed: use scripts/pyenv.sh (interop venv)")

from conftest import ROOT  # noqa: E402

SPM = ROOT / "tests" / "fixtures" / "spm"
FAMILY = ROOT / "tests" / "fixtures" / "families" / "llama32"


def convert(qforge, src, dst, to, *extra):
    out = subprocess.run([str(qforge), "convert", str(src), str(dst), "--to", to, *extra], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def processor(path):
    return spm.SentencePieceProcessor(model_file=str(path))


def test_sentencepiece_reads_what_qforge_writes(qforge, tmp_path):
    e = json.loads((SPM / "expected.json").read_text(encoding="utf-8"))
    original = processor(SPM / "tokenizer.model")
    meta = tmp_path / "meta"
    convert(qforge, FAMILY, meta, "meta", "--allow-lossy")
    shutil.copy(SPM / "tokenizer.model", meta / "tokenizer.model")
    convert(qforge, meta, tmp_path / "hf", "hf")
    convert(qforge, meta, tmp_path / "m.gguf", "gguf")
    for src in ["hf", "m.gguf"]:
        out = tmp_path / f"meta-from-{src.removesuffix('.gguf')}"
        convert(qforge, tmp_path / src, out, "meta")
        sp = processor(out / "tokenizer.model")
        assert sp.get_piece_size() == original.get_piece_size()
        assert [sp.id_to_piece(i) for i in range(sp.get_piece_size())] == \
            [original.id_to_piece(i) for i in range(original.get_piece_size())]
        assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == \
            (original.unk_id(), original.bos_id(), original.eos_id(), original.pad_id())
        bad = [i for i, c in enumerate(e["cases"]) if [sp.bos_id()] + sp.encode(c["text"]) != c["sentencepiece"]]
        print(f"{src} -> meta: {len(e['cases']) - len(bad)} of {len(e['cases'])} strings give sentencepiece's ids")
        assert not bad, [e["cases"][i]["text"][:60] for i in bad]

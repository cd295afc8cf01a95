#!/usr/bin/env python3
"""Generate tests/fixtures/spm/: a real SentencePiece BPE `tokenizer.model` as Meta's Llama 2 ships
one, trained by the sentencepiece library itself, and the ids sentencepiece and transformers give.

    PY="$(scripts/pyenv.sh --llamacpp-convert --print-python)"
    scripts/fetch-data.sh --text-only && scripts/build-llama-cpp.sh   # Hamlet, llama.cpp's sources
    "$PY" scripts/gen_spm_fixture.py

Writes
  - tokenizer.model: sentencepiece.SentencePieceTrainer on the first 85 % of Hamlet (the family
    fixtures' training part), BPE, 384 pieces (the llama31 family fixture's vocabulary size, so
    that fixture's weights can stand beside it in a Meta checkpoint), with Llama 2's trainer and
    normalizer settings (its tokenizer.model's TrainerSpec/NormalizerSpec: byte_fallback,
    split_digits, identity normalization, dummy prefix, no whitespace removal, unk 0, bos 1,
    eos 2, no pad);
  - vocab.gguf: llama.cpp's convert_hf_to_gguf.py --vocab-only of an HF directory with this
    tokenizer.model (and transformers' tokenizer files): the `tokenizer.ggml.*` keys its
    `_set_vocab_sentencepiece` writes;
  - expected.json: for each test string (../families/eval.txt, then every string of llama.cpp's
    models/ggml-vocab-llama-spm.gguf.inp), the ids `SentencePieceProcessor.encode` gives with BOS
    first (Meta's generation.py encodes with bos=True, eos=False), and the ids of transformers'
    LlamaTokenizerFast converted from this file (LlamaConverter, `legacy` as Llama 2's
    tokenizer_config says: true), with the strings where the two differ listed.
Re-running is byte-identical (sentencepiece's BPE trainer is deterministic on one thread).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "spm"
VOCAB = 384
TRAIN_FRACTION = 0.85


def cache() -> Path:
    c = os.environ.get("QFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "qforge")
    return Path(c)


def suite_strings() -> list[str]:
    roots = sorted(cache().glob("llama.cpp-*/src/models/ggml-vocab-llama-spm.gguf.inp"))
    if not roots:
        sys.exit("llama.cpp's sources missing: run scripts/build-llama-cpp.sh")
    text = roots[-1].read_text(encoding="utf-8")
    parts = text.split("\n__ggml_vocab_test__\n")
    # the file ends with a separator line: the last part is empty
    return [p for p in parts[:-1]] if parts[-1] == "" else parts


def main() -> None:
    import sentencepiece as spm
    import transformers
    import transformers.convert_slow_tokenizer as cst
    from transformers import LlamaTokenizerFast

    # sentencepiece 0.2.3's bundled sentencepiece_model_pb2 needs protobuf >= 5 (runtime_version);
    # the converter venv pins protobuf 4 (gguf-py's). transformers ships the same proto compiled for
    # protobuf 4 (transformers/utils/sentencepiece_model_pb2_new.py), which its import_protobuf
    # picks when sentencepiece is absent: use that one.
    from transformers.utils import sentencepiece_model_pb2_new
    cst.import_protobuf = lambda error_message="": sentencepiece_model_pb2_new

    play = (cache() / "text" / "hamlet.txt").read_text(encoding="utf-8")
    cut = play.index("\n", int(len(play) * TRAIN_FRACTION)) + 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        train = Path(t) / "train.txt"
        train.write_text(play[:cut], encoding="utf-8")
        # relative names: the TrainerSpec stored in the model records input and model_prefix
        cwd = os.getcwd()
        os.chdir(t)
        spm.SentencePieceTrainer.train(
            input="train.txt", model_prefix="m", model_type="bpe", vocab_size=VOCAB,
            byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=0.99995, num_threads=1,
            max_sentence_length=1 << 20, split_by_whitespace=True, minloglevel=2)
        os.chdir(cwd)
        model = (Path(t) / "m.model").read_bytes()
    (OUT / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))
    assert sp.get_piece_size() == VOCAB
    # add_prefix_space as the model's add_dummy_prefix (left None, LlamaConverter.normalizer omits the
    # Prepend("▁") that Llama 2's own tokenizer.json has)
    hf = LlamaTokenizerFast(vocab_file=str(OUT / "tokenizer.model"), from_slow=True, legacy=True, add_prefix_space=True,
                            add_bos_token=True, add_eos_token=False)
    strings = [(ROOT / "tests" / "fixtures" / "families" / "eval.txt").read_text(encoding="utf-8")]
    strings += suite_strings()
    cases, differ = [], []
    for i, s in enumerate(strings):
        ids = [sp.bos_id()] + sp.encode(s)
        t = hf(s)["input_ids"]
        cases.append({"text": s, "sentencepiece": ids, "transformers": t})
        if ids != t:
            differ.append(i)
    # convert_hf_to_gguf.py --vocab-only on an HF directory holding this tokenizer (the llama32
    # family fixture's config and weights, tokenizer.model, transformers' tokenizer files): the
    # tokenizer.ggml.* keys `_set_vocab_sentencepiece` writes, for tests to compare qforge's with.
    src = ROOT / "tests" / "fixtures" / "families" / "llama32"
    with tempfile.TemporaryDirectory() as t:
        d = Path(t) / "llama2-spm"
        d.mkdir()
        for f in ["config.json", "model.safetensors", "generation_config.json"]:
            (d / f).write_bytes((src / f).read_bytes())
        (d / "tokenizer.model").write_bytes(model)
        hf.save_pretrained(d)
        conv = sorted(cache().glob("llama.cpp-*/src/convert_hf_to_gguf.py"))[-1]
        subprocess.run([sys.executable, str(conv), str(d), "--vocab-only", "--outtype", "f32", "--outfile",
                        str(OUT / "vocab.gguf")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    expected = {
        "about": "ids of each text: sentencepiece (BOS first, as Meta's generation.py) and transformers' "
                 "LlamaTokenizerFast converted from tokenizer.model (legacy=True, Llama 2's setting)",
        "texts": "cases[0]: ../families/eval.txt; then llama.cpp models/ggml-vocab-llama-spm.gguf.inp",
        "tokenizer_model_sha256": hashlib.sha256(model).hexdigest(),
        "vocab_size": VOCAB,
        "differ": differ,
        "versions": {"sentencepiece": spm.__version__, "transformers": transformers.__version__},
        "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(model)} bytes, {len(cases)} texts, sentencepiece vs transformers differ on {differ}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Tokenizers: qforge's GGUF -> tokenizer.json against llama.cpp's own tokenizer.

The key acceptance test: SmolLM2-135M-Instruct's GGUF (pre-tokenizer `smollm`, add_bos false)
converted by qforge to tokenizer.json, loaded by the Python `tokenizers` library, must encode a
whole Shakespeare play to exactly the ids `llama-tokenize` produces for the GGUF. transformers
5.23 gets this wrong (it splits SmolLM text like GPT-2, so numbers are not cut into single
digits: 52,803 tokens instead of 52,755 on Hamlet); the test shows that gap too.

Also checked, on llama.cpp's own vocabulary files (models/ggml-vocab-*.gguf, from the
llama-cpp-python sdist that scripts/build-llama-cpp.sh unpacks): llama.cpp's test vectors
(.inp/.out), Hamlet against llama-tokenize, and that llama.cpp's pre-tokenizer probe hash of our
tokenizer.json names the right pre-tokenizer; the same vocabularies relabelled with other
pre-tokenizer names (llama.cpp applies the name's regexes to any vocabulary); the HF -> GGUF
direction against gguf-py's reading of the original GGUF; and Meta's tiktoken format, with
Llama 3's merges rebuilt from ranks exactly as in llama.cpp's Llama 3 vocabulary.

llama.cpp's whole vocabulary suite (every models/ggml-vocab-*.gguf with .inp/.out: byte-level
BPE, SentencePiece, Gemma 4) runs in test_llama_cpp_vocab_suite; the vocabularies still refused
are listed in VOCAB_SUITE_REFUSED with the reason. SentencePiece vocabularies also go
GGUF -> tokenizer.json -> GGUF and are tokenized by llama.cpp itself from our GGUF.

Peers: `llama-tokenize` from scripts/build-llama-cpp.sh (tests skip, loudly, only when that
build is absent), qforge's example binary `tokenizer_json` (built here with cargo, or given as
QFORGE_TOKENIZER_JSON_BIN).
"""

import ast
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import warnings

import pytest

from conftest import ROOT, TARGET, cache_dir

HAMLET_TOKENS_LLAMA_CPP = 52_755  # SmolLM2 GGUF, llama-tokenize, no BOS (add_bos_token = false)
# The same vocabulary and merges with plain GPT-2 ByteLevel splitting (our tokenizer.json without
# its Digits step, run by the `tokenizers` library): a figure of this test's own making, showing
# what the Digits step changes, not a measurement of transformers.
HAMLET_TOKENS_GPT2_SPLIT = 52_803
PROBE_TEXT_SHA256 = "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"  # = Rust's

# llama.cpp conversion/base.py get_vocab_base_pre: hash -> name (mpt and olmo share one hash;
# llama.cpp's consecutive ifs leave "olmo").
LLAMA_CPP_PRE_HASHES = {
    "llama-bpe": "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
    "smollm": "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
    "gpt-2": "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
    "starcoder": "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
    "refact": "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
    "command-r": "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
    "olmo": "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
}
LLAMA_CPP_PRE_HASHES |= {
    "qwen2": "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
    "deepseek-llm": "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
    "deepseek-coder": "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
    "falcon": "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
}
# llama.cpp vocabulary files whose pre-tokenizer qforge writes, and the probe-hash name for each
# (qwen35's file is Qwen2's vocabulary relabelled: its probe hash is Qwen2's, so llama.cpp's
# converter would name it qwen2 too). SentencePiece files have no probe hash: None.
VOCAB_FILES = {
    "llama-bpe": "llama-bpe",
    "gpt-2": "gpt-2",
    "starcoder": "starcoder",
    "refact": "refact",
    "command-r": "command-r",
    "mpt": "olmo",
    "qwen2": "qwen2",
    "qwen35": "qwen2",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
    "falcon": "falcon",
    "llama-spm": None,
    "phi-3": None,
    "gemma-4": None,
}

# llama.cpp's vocabulary test suite (models/ggml-vocab-*.gguf with .inp/.out) in the pinned
# llama-cpp-python sdist: the vocabularies qforge refuses to convert, with the reason and a
# fragment of the refusal. Every other vocabulary with test files must encode every test string
# to llama.cpp's ids. A refused vocabulary that starts converting fails the test, so this list
# cannot go stale.
VOCAB_SUITE_REFUSED = {
    "bert-bge": (
        "WordPiece (tokenizer.ggml.model \"bert\", BAAI bge-small embeddings): not a "
        "Llama-descended family; no WordPiece writer",
        'this one is "bert"',
    ),
}


# ---- peers and data ----------------------------------------------------------------------------


def _llama_cpp_root() -> pathlib.Path | None:
    roots = sorted(cache_dir().glob("llama.cpp-*/"))
    return roots[-1] if roots else None


def _suite_names() -> list[str]:
    """The vocabularies with llama.cpp test files in the unpacked sdist (scripts/build-llama-cpp.sh
    unpacks it to $QFORGE_CACHE/llama.cpp-<V>/src), found at collection time."""
    root = _llama_cpp_root()
    models = root / "src" / "models" if root else None
    if models is None or not models.is_dir():
        return []
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in models.glob("ggml-vocab-*.gguf.inp"))


@pytest.fixture(scope="session")
def vocab_models() -> pathlib.Path:
    """llama.cpp's models/ directory (vocabulary files and their test vectors); needs only the
    unpacked sources, not the llama.cpp build."""
    root = _llama_cpp_root()
    models = root / "src" / "models" if root else None
    if models is None or not models.is_dir():
        msg = (
            f"*** SKIPPED: llama.cpp's sources are not unpacked under {cache_dir()}/llama.cpp-*/src; run "
            "scripts/build-llama-cpp.sh to check qforge's tokenizers against llama.cpp's vocabulary suite ***"
        )
        print(msg)
        warnings.warn(msg)
        pytest.skip(msg)
    return models


@pytest.fixture(scope="session")
def llama_tokenize() -> pathlib.Path:
    env = os.environ.get("QFORGE_LLAMA_CPP_BIN")
    root = _llama_cpp_root()
    candidates = [pathlib.Path(env) / "llama-tokenize"] if env else []
    if root is not None:
        candidates.append(root / "build/bin/llama-tokenize")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    msg = (
        "*** SKIPPED: llama.cpp's llama-tokenize is not built (looked for "
        f"{[str(c) for c in candidates] or cache_dir() / 'llama.cpp-*/build/bin/llama-tokenize'}); "
        "run scripts/build-llama-cpp.sh (or set QFORGE_LLAMA_CPP_BIN) to check qforge's tokenizers "
        "against llama.cpp ***"
    )
    print(msg)
    warnings.warn(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def llama_cpp_src(llama_tokenize) -> pathlib.Path:
    src = llama_tokenize.parents[2] / "src"
    if not (src / "models").is_dir():
        pytest.fail(f"{src}/models missing beside {llama_tokenize}: re-run scripts/build-llama-cpp.sh")
    return src


@pytest.fixture(scope="session")
def tokenizer_json_bin() -> pathlib.Path:
    """qforge-convert's example `tokenizer_json`: QFORGE_TOKENIZER_JSON_BIN, else built now."""
    env = os.environ.get("QFORGE_TOKENIZER_JSON_BIN")
    if env:
        p = pathlib.Path(env)
        if not p.is_file():
            pytest.fail(f"QFORGE_TOKENIZER_JSON_BIN={env} is not a file")
        return p
    cargo = shutil.which("cargo")
    if cargo:
        cmd = [cargo, "build", "--release", "--locked", "-p", "qforge-convert", "--example", "tokenizer_json",
               "--message-format=json-render-diagnostics"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.fail(f"`{' '.join(cmd[:-1])}` failed:\n{out.stderr[-4000:]}")
        for line in out.stdout.splitlines():
            msg = json.loads(line)
            if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "tokenizer_json":
                if msg.get("executable"):
                    return pathlib.Path(msg["executable"])
    for c in [TARGET / "release/examples/tokenizer_json", TARGET / "debug/examples/tokenizer_json"]:
        if c.is_file():
            return c
    pytest.fail(
        "qforge's tokenizer_json example is not built and cargo is not on PATH: run "
        "`cargo build --release -p qforge-convert --example tokenizer_json` or set QFORGE_TOKENIZER_JSON_BIN"
    )



def llama_cpp_ids(llama_tokenize: pathlib.Path, model: pathlib.Path, text_file: pathlib.Path) -> list[int]:
    """llama.cpp's ids for a file, BOS as the model says (add_bos_token), specials parsed; the
    text is taken verbatim (--no-escape: no \\n processing)."""
    out = subprocess.run(
        [str(llama_tokenize), "-m", str(model), "-f", str(text_file), "--ids", "--log-disable", "--no-escape"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_tokenizer(bin_: pathlib.Path, model: pathlib.Path, out: pathlib.Path) -> dict:
    res = subprocess.run([str(bin_), str(model), str(out)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def qforge_vocab(bin_: pathlib.Path, src: pathlib.Path, *extra: str) -> dict:
    res = subprocess.run([str(bin_), "--vocab", str(src), *extra], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def load(dir_: pathlib.Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(dir_ / "tokenizer.json"))


def first_difference(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"lengths {len(a)} vs {len(b)}; first difference at {i}: {a[i:i + 8]} vs {b[i:i + 8]}"


def probe_text(src: pathlib.Path) -> str:
    """llama.cpp's pre-tokenizer probe text (`chktxt`), read from its converter."""
    for rel in ["conversion/base.py", "convert_hf_to_gguf.py"]:
        p = src / rel
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip().startswith("chktxt = "):
                    return ast.literal_eval(line.strip()[len("chktxt = "):])
    pytest.fail(f"no chktxt in {src}/conversion/base.py or convert_hf_to_gguf.py")


def vocab_vectors(src: pathlib.Path, name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors for a vocabulary: `src` is the sources root or its models/."""
    models = src if src.name == "models" else src / "models"
    base = models / f"ggml-vocab-{name}.gguf"
    inputs = (base.with_name(base.name + ".inp")).read_bytes().decode("utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (base.with_name(base.name + ".out")).read_text(encoding="utf-8").split("\n")
    assert len(outputs) >= len(inputs)
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inputs, outputs)]


def relabel_pre(src_gguf: pathlib.Path, dst: pathlib.Path, pre: str | None) -> None:
    """Copy a tensor-less (vocabulary-only) GGUF with tokenizer.ggml.pre set to `pre` (removed
    when None), with gguf-py."""
    import gguf

    r = gguf.GGUFReader(str(src_gguf))
    assert not r.tensors, "only vocabulary files are copied"
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "tokenizer.ggml.pre":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub)
    if pre is not None:
        w.add_key_value("tokenizer.ggml.pre", pre, gguf.GGUFValueType.STRING)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- SmolLM2: the acceptance test ---------------------------------------------------------------


def test_smollm2_hamlet_ids_equal_llama_cpp(smollm2_gguf, tokenizer_json_bin, llama_tokenize, hamlet, tmp_path,
                                           record_property):
    summary = write_tokenizer(tokenizer_json_bin, smollm2_gguf, tmp_path)
    assert summary == {"tokens": 49152, "merges": 48900, "pre": "smollm", "add_bos": False, "add_eos": False}
    tj = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["pre_tokenizer"] == {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["add_bos_token"] is False and cfg["eos_token"] == "<|im_end|>" and "chat_template" in cfg

    text = hamlet.read_bytes().decode("utf-8")
    ours = load(tmp_path).encode(text).ids  # add_special_tokens=True: the model's BOS rule
    ref = llama_cpp_ids(llama_tokenize, smollm2_gguf, hamlet)
    record_property("hamlet_tokens_qforge", len(ours))
    record_property("hamlet_tokens_llama_cpp", len(ref))
    print(f"SmolLM2 Hamlet: qforge tokenizer.json {len(ours)} tokens, llama-tokenize {len(ref)} tokens")
    assert ours == ref, first_difference(ours, ref)
    assert len(ref) == HAMLET_TOKENS_LLAMA_CPP
    assert ref[0] != 1, "no BOS: SmolLM2's GGUF has add_bos_token = false"

    # The gap the Digits step closes: plain GPT-2 splitting (the `tokenizers` library on our
    # tokenizer.json without Digits; transformers itself is not run here).
    from tokenizers import Tokenizer

    tj["pre_tokenizer"] = tj["pre_tokenizer"]["pretokenizers"][1]
    gpt2_split = Tokenizer.from_str(json.dumps(tj)).encode(text).ids
    print(f"SmolLM2 Hamlet with plain GPT-2 splitting: {len(gpt2_split)} tokens")
    assert len(gpt2_split) == HAMLET_TOKENS_GPT2_SPLIT


def test_smollm2_numbers_and_specials_equal_llama_cpp(smollm2_gguf, tokenizer_json_bin, llama_tokenize, tmp_path):
    write_tokenizer(tokenizer_json_bin, smollm2_gguf, tmp_path / "tok")
    text = (
        "Act 3, scene 1, line 56: 'To be, or not to be' (1603; 1623 folio). Price: $1,234.50 or 3.14159e-10 "
        "\u0661\u0662\u0663 \u2167 \u00bd!\n<|im_start|>user\nHi 42<|im_end|>\n\t  trailing   \n\n"
    )
    f = tmp_path / "numbers.txt"
    f.write_bytes(text.encode("utf-8"))
    ours = load(tmp_path / "tok").encode(text).ids
    ref = llama_cpp_ids(llama_tokenize, smollm2_gguf, f)
    assert ours == ref, first_difference(ours, ref)
    assert 1 in ours and 2 in ours  # <|im_start|>, <|im_end|> matched whole


def test_smollm2_hf_to_gguf_view_and_probe_hash(smollm2_gguf, tokenizer_json_bin, tmp_path):
    """HF -> GGUF: our tokenizer.json read back as llama.cpp's converter would (pre identified by
    hashing the probe text's ids) gives the original GGUF's tokenizer, as gguf-py reads it."""
    import gguf

    write_tokenizer(tokenizer_json_bin, smollm2_gguf, tmp_path)
    res = subprocess.run([str(tokenizer_json_bin), "--pre-hash", str(tmp_path)], check=True, capture_output=True,
                         text=True)
    assert json.loads(res.stdout) == {"chkhsh": LLAMA_CPP_PRE_HASHES["smollm"], "pre": "smollm"}

    back = qforge_vocab(tokenizer_json_bin, tmp_path)
    r = gguf.GGUFReader(str(smollm2_gguf))
    field = lambda k: r.fields[k].contents() if k in r.fields else None  # noqa: E731
    assert back["model"] == field("tokenizer.ggml.model") == "gpt2"
    assert back["pre"] == field("tokenizer.ggml.pre") == "smollm"
    assert back["tokens"] == field("tokenizer.ggml.tokens")
    assert back["token_types"] == field("tokenizer.ggml.token_type")
    assert back["merges"] == field("tokenizer.ggml.merges")
    for ours, key in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id"), ("add_bos", "add_bos_token")]:
        assert back[ours] == field(f"tokenizer.ggml.{key}"), key
    assert back["chat_template"] == field("tokenizer.chat_template")


# ---- llama.cpp's own vocabulary files ---------------------------------------------------------


def test_probe_text_is_the_one_qforge_embeds(llama_cpp_src):
    text = probe_text(llama_cpp_src)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == PROBE_TEXT_SHA256


@pytest.mark.parametrize("name", list(VOCAB_FILES))
def test_llama_cpp_vocab(name, llama_cpp_src, tokenizer_json_bin, llama_tokenize, hamlet, tmp_path):
    model = llama_cpp_src / "models" / f"ggml-vocab-{name}.gguf"
    write_tokenizer(tokenizer_json_bin, model, tmp_path)
    tok = load(tmp_path)

    bad = [(t, tok.encode(t, add_special_tokens=False).ids, want) for t, want in vocab_vectors(llama_cpp_src, name)]
    bad = [b for b in bad if b[1] != b[2]]
    assert not bad, f"{len(bad)} of llama.cpp's test vectors differ, e.g. {bad[:3]}"

    ours = tok.encode(hamlet.read_bytes().decode("utf-8")).ids
    ref = llama_cpp_ids(llama_tokenize, model, hamlet)
    print(f"{name}: Hamlet {len(ours)} tokens (llama-tokenize {len(ref)})")
    assert ours == ref, first_difference(ours, ref)

    want = VOCAB_FILES[name]
    if want is not None:
        res = subprocess.run([str(tokenizer_json_bin), "--pre-hash", str(tmp_path)], check=True,
                             capture_output=True, text=True)
        assert json.loads(res.stdout) == {"chkhsh": LLAMA_CPP_PRE_HASHES[want], "pre": want}


@pytest.mark.parametrize("name", _suite_names() or ["(no llama.cpp sources)"])
def test_llama_cpp_vocab_suite(name, vocab_models, tokenizer_json_bin, tmp_path, record_property):
    """llama.cpp's own tokenizer test suite: every vocabulary with .inp/.out files, converted by
    qforge to tokenizer.json and run by the `tokenizers` library, gives llama.cpp's ids for every
    test string (no special tokens added: llama.cpp's test-tokenizer-0 encodes with
    add_special = false) -- or is one of VOCAB_SUITE_REFUSED, refused with its reason."""
    vectors = vocab_vectors(vocab_models, name)
    model = vocab_models / f"ggml-vocab-{name}.gguf"
    res = subprocess.run([str(tokenizer_json_bin), str(model), str(tmp_path)], capture_output=True, text=True)
    if name in VOCAB_SUITE_REFUSED:
        reason, fragment = VOCAB_SUITE_REFUSED[name]
        assert res.returncode != 0, f"{name} now converts: take it off VOCAB_SUITE_REFUSED ({reason})"
        assert fragment in res.stderr, res.stderr
        record_property("passed", f"0/{len(vectors)} (refused: {reason})")
        print(f"{name}: refused, 0/{len(vectors)} strings: {reason}")
        return
    assert res.returncode == 0, res.stderr
    tok = load(tmp_path)
    bad = [(t, tok.encode(t, add_special_tokens=False).ids, want) for t, want in vectors]
    bad = [b for b in bad if b[1] != b[2]]
    record_property("passed", f"{len(vectors) - len(bad)}/{len(vectors)}")
    print(f"{name}: {len(vectors) - len(bad)}/{len(vectors)} strings equal llama.cpp's ids")
    assert not bad, f"{len(bad)} of {len(vectors)} test strings differ, e.g. {bad[:3]}"


def test_llama_cpp_vocab_suite_covers_the_required_vocabularies():
    """The issue's floor: these must be in the suite and not refused."""
    names = _suite_names()
    if not names:
        pytest.skip("llama.cpp's sources are not unpacked (see test_llama_cpp_vocab_suite)")
    for required in ["llama-spm", "llama-bpe", "qwen2", "qwen35", "phi-3", "gpt-2"]:
        assert required in names and required not in VOCAB_SUITE_REFUSED, required
    assert set(VOCAB_SUITE_REFUSED) <= set(names), "a refused vocabulary the suite no longer has"


def write_vocab_gguf(v: dict, dst: pathlib.Path) -> None:
    """A vocabulary-only GGUF (gguf-py) of qforge's GGUF view (`tokenizer_json --vocab`)."""
    import gguf

    w = gguf.GGUFWriter(str(dst), "llama")
    w.add_tokenizer_model(v["model"])
    if v.get("pre") is not None:
        w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    if v.get("scores") is not None:
        w.add_token_scores(v["scores"])
    w.add_token_types(v["token_types"])
    if v["merges"]:
        w.add_token_merges(v["merges"])
    for key, fn in [("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                    ("pad", w.add_pad_token_id)]:
        if v.get(key) is not None:
            fn(v[key])
    for key, fn in [("add_bos", w.add_add_bos_token), ("add_eos", w.add_add_eos_token),
                    ("add_space_prefix", w.add_add_space_prefix)]:
        if v.get(key) is not None:
            fn(v[key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_spm_round_trip_through_llama_cpp(name, llama_cpp_src, tokenizer_json_bin, llama_tokenize, hamlet,
                                          tmp_path):
    """SentencePiece GGUF -> tokenizer.json -> GGUF: the tokens and types come back as they
    were, and llama.cpp tokenizes with our GGUF (scores rebuilt from the merge ranks) exactly as
    with the original (Hamlet, the test vectors, the probe text); the tokenizer.json rebuilt
    from our GGUF tokenizes the test vectors like the first one."""
    import gguf

    model = llama_cpp_src / "models" / f"ggml-vocab-{name}.gguf"
    write_tokenizer(tokenizer_json_bin, model, tmp_path / "hf")
    back = qforge_vocab(tokenizer_json_bin, tmp_path / "hf")
    r = gguf.GGUFReader(str(model))
    field = lambda k: r.fields[k].contents() if k in r.fields else None  # noqa: E731
    assert back["model"] == "llama" and back["pre"] is None and back["merges"] == []
    assert back["tokens"] == field("tokenizer.ggml.tokens")
    # tokenizer.json has no way to say "unknown" for a token other than the unknown token:
    # Phi-3's GGUF types its 53 [PAD] fillers unknown (2); they come back normal (1).
    unk = field("tokenizer.ggml.unknown_token_id")
    types = field("tokenizer.ggml.token_type")
    differ = {(i, a, b) for i, (a, b) in enumerate(zip(types, back["token_types"])) if a != b}
    assert len(back["token_types"]) == len(types)
    assert all(a == 2 and b == 1 and i != unk for i, a, b in differ), sorted(differ)[:5]
    assert len(differ) == {"llama-spm": 0, "phi-3": 53}[name]
    assert back["add_space_prefix"] is True
    for ours, key in [("bos", "bos_token_id"), ("unk", "unknown_token_id"), ("add_bos", "add_bos_token")]:
        assert back[ours] == field(f"tokenizer.ggml.{key}"), key

    ours_gguf = tmp_path / "ours.gguf"
    write_vocab_gguf(back, ours_gguf)
    texts = {
        "hamlet": hamlet.read_bytes().decode("utf-8"),
        "probe": probe_text(llama_cpp_src),
        "vectors": "\n".join(t for t, _ in vocab_vectors(llama_cpp_src, name)),
    }
    for what, text in texts.items():
        f = tmp_path / f"{what}.txt"
        f.write_bytes(text.encode("utf-8"))
        ref = llama_cpp_ids(llama_tokenize, model, f)
        got = llama_cpp_ids(llama_tokenize, ours_gguf, f)
        assert got == ref, f"{what}: {first_difference(got, ref)}"

    write_tokenizer(tokenizer_json_bin, ours_gguf, tmp_path / "hf2")
    tok = load(tmp_path / "hf2")
    for t, want in vocab_vectors(llama_cpp_src, name):
        assert tok.encode(t, add_special_tokens=False).ids == want, t


@pytest.mark.parametrize("pre", ["default", None, "smollm", "llama-bpe", "gpt-2"])
def test_pre_tokenizers_on_a_relabelled_vocab(pre, llama_cpp_src, tokenizer_json_bin, llama_tokenize, hamlet,
                                              tmp_path):
    """llama.cpp applies the regexes of whatever pre name a file carries: GPT-2's vocabulary
    relabelled with each name must still tokenize like llama.cpp (None: no pre key, which
    llama.cpp treats as "default" with a warning)."""
    model = tmp_path / f"gpt2-as-{pre}.gguf"
    relabel_pre(llama_cpp_src / "models" / "ggml-vocab-gpt-2.gguf", model, pre)
    write_tokenizer(tokenizer_json_bin, model, tmp_path / "tok")
    tok = load(tmp_path / "tok")
    texts = {
        "hamlet": hamlet.read_bytes().decode("utf-8"),
        "probe": probe_text(llama_cpp_src),
        "vectors": "\n".join(t for t, _ in vocab_vectors(llama_cpp_src, "gpt-2")),
    }
    for what, text in texts.items():
        f = tmp_path / f"{what}.txt"
        f.write_bytes(text.encode("utf-8"))
        ours = tok.encode(text).ids
        ref = llama_cpp_ids(llama_tokenize, model, f)
        assert ours == ref, f"{what}: {first_difference(ours, ref)}"


# ---- Meta tiktoken -> GGUF view / tokenizer.json ------------------------------------------------


def test_tiktoken_rebuilds_llama3_merges(llama_cpp_src, tokenizer_json_bin, llama_tokenize, hamlet, tmp_path):
    """Llama 3's tokenizer as a tiktoken file (recovered from llama.cpp's Llama 3 vocabulary:
    token bytes and rank = id for the first 128000) converted by qforge: the same 128256 tokens
    and types, and merges rebuilt from the ranks equal to llama.cpp's file (which came from
    Meta's official tokenizer.json, made by transformers' TikTokenConverter) entry for entry;
    its tokenizer.json tokenizes like llama.cpp and hashes as llama-bpe."""
    import base64

    import gguf

    model = llama_cpp_src / "models" / "ggml-vocab-llama-bpe.gguf"
    r = gguf.GGUFReader(str(model))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    byte_of = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}
    lines = [f"{base64.b64encode(bytes(byte_of[c] for c in t)).decode()} {i}" for i, t in enumerate(tokens[:128000])]
    tiktoken = tmp_path / "tokenizer.model"
    tiktoken.write_text("\n".join(lines) + "\n", encoding="ascii")

    v = qforge_vocab(tokenizer_json_bin, tiktoken, "--llama3")
    assert v["tokens"] == tokens
    assert v["token_types"] == r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    assert len(v["merges"]) == len(merges) == 280_147
    assert v["merges"] == merges
    assert (v["bos"], v["eos"], v["eot"], v["add_bos"], v["pre"]) == (128000, 128001, 128009, True, "llama-bpe")

    out = tmp_path / "hf"
    subprocess.run([str(tokenizer_json_bin), str(tiktoken), str(out), "--llama3"], check=True, capture_output=True)
    ours = load(out).encode(hamlet.read_bytes().decode("utf-8")).ids
    ref = llama_cpp_ids(llama_tokenize, model, hamlet)
    assert ours == ref, first_difference(ours, ref)
    res = subprocess.run([str(tokenizer_json_bin), "--pre-hash", str(out)], check=True, capture_output=True, text=True)
    assert json.loads(res.stdout) == {"chkhsh": LLAMA_CPP_PRE_HASHES["llama-bpe"], "pre": "llama-bpe"}

"""qforge's forward (`qforge perplexity --logits-out`) against transformers' own modeling code for
every model family.

Tiny random-weight models made by transformers itself (F32, hidden 64, 2 layers, a byte-level
256-token BPE vocabulary): Llama (tied embeddings), Qwen2 (q/k/v biases, a 7-token sliding
window on layer 1 via `use_sliding_window`/`max_window_layers`), Qwen3 (q/k RMSNorm,
head_dim 24 x 4 heads != hidden 64) and Mistral (a 5-token window on every layer), evaluated on
64-token chunks, so the windows bind. The scored logits of chunk 0 must equal transformers'
(eager attention, float32) within 1e-4 relative to their largest magnitude.

Needs torch + transformers: skipped unless importable (`scripts/test-heavy.sh`).
"""

import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: run scripts/test-heavy.sh")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CTX = 64
TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    "and by opposing end them. To die, to sleep; no more; and by a sleep to say we end the "
    "heart-ache and the thousand natural shocks that flesh is heir to. "
) * 2
COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    vocab_size=256,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


def byte_vocab():
    """GPT-2's byte -> unicode table (transformers `bytes_to_unicode`), as a 256-token vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): i for i, c in enumerate(cs)}


def family(name):
    t = transformers
    return {
        "llama": (t.LlamaForCausalLM, t.LlamaConfig(**COMMON, head_dim=16, tie_word_embeddings=True)),
        "qwen2": (
            t.Qwen2ForCausalLM,
            t.Qwen2Config(**COMMON, tie_word_embeddings=False, use_sliding_window=True, sliding_window=7, max_window_layers=1),
        ),
        "qwen3": (t.Qwen3ForCausalLM, t.Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=True)),
        "mistral": (t.MistralForCausalLM, t.MistralConfig(**COMMON, head_dim=16, sliding_window=5)),
    }[name]


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral"])
def test_logits_equal_transformers(name, qforge, tmp_path):
    cls, cfg = family(name)
    cfg._attn_implementation = "eager"
    torch.manual_seed(1)
    model = cls(cfg).to(torch.float32).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.5 if "bias" in n else 0.3)
    hf = tmp_path / name
    model.save_pretrained(hf, safe_serialization=True)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=byte_vocab(), merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.save(str(hf / "tokenizer.json"))
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    logits = tmp_path / "logits.f32"
    subprocess.run(
        [str(qforge), "perplexity", str(hf), "-f", str(text), "-c", str(CTX), "--logits-out", str(logits), "--json"],
        check=True,
        capture_output=True,
    )
    ours = np.fromfile(logits, dtype=np.float32).reshape(-1, 256)
    ids = tok.encode(TEXT).ids[:CTX]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()[CTX // 2 : CTX - 1]
    assert ours.shape == ref.shape
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    print(f"{name}: max relative logit difference {err:.2e}")
    assert err < 1e-4, f"{name}: {err}"

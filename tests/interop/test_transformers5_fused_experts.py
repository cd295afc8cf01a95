"""transformers 5's fused expert tensors (Mixtral, Qwen3-MoE) read by qforge (heavy).

transformers 5.x holds a Mixtral / Qwen3-MoE block's experts as two 3-D parameters
(modeling_mixtral.py `MixtralExperts`, modeling_qwen3_moe.py `Qwen3MoeExperts`):
`mlp.experts.gate_up_proj` `[E, 2·ffn, hidden]` and `mlp.experts.down_proj` `[E, hidden, ffn]`,
and Mixtral's `block_sparse_moe.gate` becomes `mlp.gate` (conversion_mapping.py "mixtral").
Its `save_pretrained` reverses that mapping and writes the 4.x per-expert tensors; a checkpoint
written from the state dict itself (safetensors `save_file`, as tools working on the loaded
model do) keeps the fused layout, and transformers 5 loads it back unchanged. On the
transformers-made fixtures of tests/fixtures/families: `qforge perplexity` on both files
equals the fixture's exactly (qforge reads each expert's projection as a slice of the stack).

Needs torch and transformers >= 5 (the heavy venv: scripts/test-heavy.sh).
"""
import json
import shutil
import subprocess

import pytest

torch = pytest.importorskip("torch", reason="torch not installed: run scripts/test-heavy.sh")
transformers = pytest.importorskip("transformers")

from conftest import ROOT  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "families"


def _ppl(qforge, model) -> float:
    out = subprocess.run([str(qforge), "perplexity", str(model), "--data", str(FIXTURES / "eval.txt"),
                          "--ctx", "64", "--chunks", "40", "--json", "--quiet"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["ppl"]


@pytest.mark.parametrize("family", ["mixtral", "qwen3moe"])
def test_transformers5_fused_experts(qforge, tmp_path, family):
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"transformers {transformers.__version__}: fused experts are 5.x's")
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    src = FIXTURES / family
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    cfg = model.config
    n, hid = cfg.num_local_experts if family == "mixtral" else cfg.num_experts, cfg.hidden_size
    ffn = cfg.intermediate_size if family == "mixtral" else cfg.moe_intermediate_size

    fused = tmp_path / "fused"
    fused.mkdir()
    for f in src.glob("*.json"):
        if f.name != "expected.json":
            shutil.copy(f, fused / f.name)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    stacks = {k: tuple(v.shape) for k, v in sd.items() if ".mlp.experts." in k}
    assert stacks and all(s == ((n, 2 * ffn, hid) if k.endswith("gate_up_proj") else (n, hid, ffn))
                          for k, s in stacks.items()), stacks
    save_file(sd, str(fused / "model.safetensors"), metadata={"format": "pt"})
    ids = torch.arange(1, 33)[None]
    again = AutoModelForCausalLM.from_pretrained(fused, dtype=torch.bfloat16)
    assert torch.equal(model(ids).logits, again(ids).logits)

    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    for f in src.glob("*.json"):
        if not (saved / f.name).exists() and f.name != "expected.json":
            shutil.copy(f, saved / f.name)  # the tokenizer's files
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        assert not any(k.endswith("gate_up_proj") for k in f.keys())

    want = _ppl(qforge, src)
    got = {"fused": _ppl(qforge, fused), "save_pretrained": _ppl(qforge, saved)}
    print(f"{family}: fixture ppl {want!r}, {got}")
    assert got == {"fused": want, "save_pretrained": want}, (want, got)

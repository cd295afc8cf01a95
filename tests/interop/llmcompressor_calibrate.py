#!/usr/bin/env python3
"""Run llm-compressor 0.14 oneshot on token-id samples written by `qforge calibrate --samples-out`.

    python llmcompressor_calibrate.py gptq-g64 BASE_HF_DIR SAMPLES.json OUT_DIR [DTYPE] [--routed-experts]
    python llmcompressor_calibrate.py fp8-static BASE_HF_DIR SAMPLES.json OUT_DIR [DTYPE]
    python llmcompressor_calibrate.py awq-g64[-asym] BASE_HF_DIR SAMPLES.json OUT_DIR [DTYPE]

DTYPE (default float32) is the torch dtype the model is loaded in. float32 on CPU: BF16 CPU
matmuls make the same GPTQ run take about an hour instead of about 1.5 minutes, and qforge's
forward is f32 too (for GPTQ, run qforge on an F32 copy of the base so both sides compute scales
and codes in f32). float64 loads it in float64, but transformers still computes RMSNorm and the RoPE tables in
float32; float64-exact also computes those in float64 (see _exact_float64).
gptq-g64 (gptq-g32: group 32): GPTQModifier, int4 symmetric group 64, dampening 0.01, block 128, actorder static
(llm-compressor's default), lm_head ignored; saved compressed (pack-quantized) with the base's
tokenizer files, so `qforge verify` can read it.
fp8-static: QuantizationModifier FP8 preset (per-tensor weights, static per-tensor input scales,
observer static_minmax); writes OUT_DIR/input_scales.json {module: scale}.
Mixture-of-experts models: oneshot's `moe_calibrate_all_experts` defaults to True in 0.14 (every
expert's hooks see every token, llmcompressor/modeling/moe/linear_experts.py
`LinearExperts2D.forward`); --routed-experts passes False, so each expert sees only the tokens
routed to it (qforge calibrate's default; its --all-experts is the True side).
awq-g32[-moe] (group 32; -moe: experts linearized, routers not quantized) / awq-g64 /
awq-g64-asym: AWQModifier (default Llama mappings, duo_scaling, n_grid 20) then
QuantizationModifier, int4 group 64 symmetric (W4A16-like) or asymmetric (W4A16_ASYM-like),
lm_head ignored; saved compressed like gptq-g64.
Needs the heavy venv with the llm-compressor layer first on PYTHONPATH
(scripts/pylayer-llmcompressor.sh).
"""
import json
import shutil
import sys
from pathlib import Path

import datasets
import datasets.fingerprint
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.quantization import QuantizationModifier


def _no_dill_fingerprints() -> None:
    """datasets 5.2 hashes transforms with dill, which fails on pyarrow 26's MonthDayNano type
    under Python 3.11 ("Can't pickle <class 'MonthDayNano'>"). Caching is off, so fingerprints
    only need to be unique: use a counter instead of a dill hash."""
    datasets.disable_caching()
    counter = iter(range(1 << 62))

    def unique(*_args, **_kwargs):
        return f"qforge{next(counter):016x}"

    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: unique())
    datasets.fingerprint.generate_fingerprint = unique
    datasets.arrow_dataset.generate_fingerprint = unique


def _exact_float64() -> None:
    """transformers' Llama is not float64 throughout when loaded in float64: LlamaRMSNorm casts
    its input to float32 (variance, rsqrt and product in float32) and the rotary cos/sin come
    from float32 angles. Compute both in float64, so the activations llm-compressor's observers
    see are the model's to within float64 rounding (what `qforge calibrate --precision f64`
    computes)."""
    import transformers.models.llama.modeling_llama as llama

    def rms_norm(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

    def rotary(self, x, position_ids):
        dim = 2 * self.inv_freq.shape[0]
        theta = self.config.rope_parameters["rope_theta"]
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        freqs = position_ids[..., None].to(torch.float64) * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    llama.LlamaRMSNorm.forward = rms_norm
    llama.LlamaRotaryEmbedding.forward = rotary


def main() -> None:
    _no_dill_fingerprints()
    args = [a for a in sys.argv[1:] if a != "--routed-experts"]
    all_experts = len(args) == len(sys.argv) - 1
    method, base, samples_path, out = args[0:4]
    dtype_name = args[4] if len(args) > 4 else "float32"
    if dtype_name == "float64-exact":
        _exact_float64()
        dtype_name = "float64"
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    s = json.loads(Path(samples_path).read_text())
    ids = s["samples"]
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    moe = method.endswith("-moe")
    if moe:
        # mixture-of-experts: each expert as its own Linear (llm-compressor's post-load
        # linearization, modeling/moe/linearize.py), the routers left unquantized as qforge does
        from llmcompressor.modeling.moe.linearize import linearize_moe

        linearize_moe(model)
        method = method.removesuffix("-moe")
    # routers stay unquantized, as qforge keeps them (match nothing in a dense model)
    ignore = ["lm_head", "re:.*mlp.gate$", "re:.*block_sparse_moe.gate$", "re:.*router$"]
    if method in ("gptq-g64", "gptq-g32"):
        recipe = GPTQModifier(
            config_groups={"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                "group_size": int(method.removeprefix("gptq-g"))}}},
            ignore=ignore, dampening_frac=0.01, block_size=128, actorder="static")
    elif method == "fp8-static":
        recipe = QuantizationModifier(targets="Linear", scheme="FP8", ignore=["lm_head"])
    elif method in ("awq-g64", "awq-g64-asym", "awq-g32"):
        from llmcompressor.modifiers.transform.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.cuda.is_available():
            # AWQ pins its cached inputs for faster host-to-device copies; pin_memory() needs a
            # CUDA driver and has no numerical effect, so skip it on a CPU-only machine
            IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None

        recipe = [
            AWQModifier(duo_scaling=True, n_grid=20),
            QuantizationModifier(
                config_groups={"group_0": {"targets": ["Linear"], "weights": {
                    "num_bits": 4, "type": "int", "symmetric": method != "awq-g64-asym",
                    "strategy": "group", "group_size": 32 if method == "awq-g32" else 64}}},
                ignore=ignore),
        ]
    else:
        raise SystemExit(f"unknown method {method}")
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=s["seq_len"],
            num_calibration_samples=len(ids), shuffle_calibration_samples=False,
            pipeline="sequential", moe_calibrate_all_experts=all_experts)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    if method == "fp8-static":
        scales = {name: float(m.input_scale.detach().float().reshape(-1)[0])
                  for name, m in model.named_modules() if hasattr(m, "input_scale")}
        (outp / "input_scales.json").write_text(json.dumps(scales, indent=1, sort_keys=True))
        return
    model.save_pretrained(out, save_compressed=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "generation_config.json"):
        if (Path(base) / f).exists():
            shutil.copy(Path(base) / f, outp / f)


if __name__ == "__main__":
    main()

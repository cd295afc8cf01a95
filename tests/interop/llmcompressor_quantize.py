#!/usr/bin/env python3
"""Quantize a Hugging Face checkpoint with llm-compressor 0.14's data-free presets.

    python llmcompressor_quantize.py SCHEME BASE_HF_DIR OUT_DIR

SCHEME is an llm-compressor preset whose weights need no calibration data (FP8_DYNAMIC,
FP8_BLOCK, NVFP4A16, MXFP4, ...): `QuantizationModifier(targets="Linear", scheme=SCHEME,
ignore=["lm_head"])`, `oneshot` without a dataset, the model loaded in its checkpoint dtype
(BF16 for SmolLM2), saved compressed. Needs the heavy venv with the llm-compressor layer first
on PYTHONPATH (scripts/pylayer-llmcompressor.sh).
"""
import sys

import torch
from transformers import AutoModelForCausalLM

from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier


def main() -> None:
    scheme, base, out = sys.argv[1:4]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(out, save_compressed=True)


if __name__ == "__main__":
    main()

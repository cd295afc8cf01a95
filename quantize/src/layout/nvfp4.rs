//! NVFP4 W4A4 (llm-compressor's `NVFP4` preset, compressed-tensors quantization/quant_scheme.py
//! `NVFP4`): the weights are `NVFP4A16`'s ([`super::fp4`]: `weight_packed`, `weight_scale`,
//! `weight_global_scale`), and the activations are FP4 E2M1 too, quantized at run time per
//! group of 16 with FP8 E4M3 group scales under one calibrated per-tensor global scale
//! (`input_activations`: `strategy: tensor_group`, `dynamic: local`, `observer:
//! static_minmax`). This module adds that global scale and the config.
//!
//! `input_global_scale` (F32, `[1]`) is compressed-tensors' `generate_gparam` on the activation
//! range the `static_minmax` observer kept over the calibration set, the same formula as the
//! weights' global scale: `gs = r(r(1 / amax) · 448·6)` ([`fp4::nvfp4_global_scale`],
//! `r` the model dtype's rounding). `amax` is the largest |x| seen at the module's input,
//! which `qforge calibrate --method fp8-static` records per module (`input_amax`), so the
//! FP8-static calibration run serves NVFP4 as is. vLLM stores it as a divisor and inverts it
//! on load (`CompressedTensorsW4A4Fp4.process_weights_after_loading`).

use std::collections::BTreeMap;

use qforge_codecs::fp4;
use qforge_codecs::int4::Int4Arith;
use qforge_codecs::DType;
use serde_json::{json, Value};

use super::HfQuantOptions;
use qforge_convert::export::{OutTensor, Producer};
use qforge_convert::write::safetensors::TensorSpec;

/// The `quantization_config` format, weights and input activations of `NVFP4` as
/// `QuantizationArgs` serializes them (keys sorted; `zp_dtype` dropped for symmetric args).
pub(super) fn config() -> (&'static str, Value, Value) {
    (
        "nvfp4-pack-quantized",
        json!({"dynamic": false, "group_size": 16, "num_bits": 4,
               "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group",
               "symmetric": true, "type": "float"}),
        json!({"dynamic": "local", "group_size": 16, "num_bits": 4,
               "observer": "static_minmax", "scale_dtype": "torch.float8_e4m3fn",
               "strategy": "tensor_group", "symmetric": true, "type": "float"}),
    )
}

/// Check before any work that module `m` has a usable calibrated activation maximum.
pub(super) fn check_amax(amax: Option<&BTreeMap<String, f32>>, m: &str) -> Result<(), String> {
    match amax.and_then(|a| a.get(m)) {
        Some(a) if a.is_finite() && *a > 0.0 => Ok(()),
        Some(a) => Err(format!("calibrated input amax of {m} is {a}")),
        None => Err(format!(
            "nvfp4 (W4A4) needs calibrated activation ranges: none for {m} (run `qforge \
             calibrate --method fp8-static` and pass --calib; nvfp4a16 needs none)"
        )),
    }
}

/// The `input_global_scale` tensor of quantized module `module` (checked by [`check_amax`]).
pub(super) fn input_global_scale<'a>(
    module: &str,
    opts: &HfQuantOptions,
    arith: Int4Arith,
) -> OutTensor<'a> {
    let amax = opts
        .input_amax
        .as_ref()
        .and_then(|a| a.get(module))
        .copied()
        .expect("checked by preflight");
    let gs = fp4::nvfp4_global_scale(amax, arith);
    OutTensor {
        spec: TensorSpec {
            name: format!("{module}.input_global_scale"),
            dtype: DType::F32,
            shape: vec![1],
        },
        produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
            buf.extend(gs.to_le_bytes());
            Ok(())
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The global scale is 448·6 / amax in the model dtype's arithmetic, and a missing or
    /// unusable amax is refused with the command that makes one.
    #[test]
    fn global_scale_and_checks() {
        // amax 2.0: 1/2 = 0.5 exactly, × 2688 = 1344 exactly in BF16 and F32
        assert_eq!(fp4::nvfp4_global_scale(2.0, Int4Arith::Bf16), 1344.0);
        assert_eq!(fp4::nvfp4_global_scale(2.0, Int4Arith::F32), 1344.0);
        let m: BTreeMap<String, f32> = [
            ("a".to_owned(), 2.0),
            ("b".to_owned(), 0.0),
            ("c".to_owned(), f32::NAN),
        ]
        .into();
        assert!(check_amax(Some(&m), "a").is_ok());
        assert!(check_amax(Some(&m), "b").unwrap_err().contains("is 0"));
        assert!(check_amax(Some(&m), "c").unwrap_err().contains("NaN"));
        let e = check_amax(None, "a").unwrap_err();
        assert!(e.contains("qforge calibrate --method fp8-static"), "{e}");
        let (format, _, input) = config();
        assert_eq!(format, "nvfp4-pack-quantized");
        assert_eq!(input["dynamic"], "local");
        assert_eq!(input["strategy"], "tensor_group");
    }
}

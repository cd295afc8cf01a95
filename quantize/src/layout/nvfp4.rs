//! NVFP4 (compressed-tensors `nvfp4-pack-quantized`, llm-compressor's `NVFP4A16` and `NVFP4`
//! presets, quantization/quant_scheme.py): FP4 E2M1 weights (`weight_packed`, two codes a
//! byte) with an FP8 E4M3 scale per 16 (`weight_scale`) under a per-tensor F32
//! `weight_global_scale`, written as compressed-tensors' `NVFP4PackedCompressor`
//! (compressors/nvfp4/base.py) does; the arithmetic is `qforge_codecs::fp4`'s
//! (llm-compressor's, bit for bit). This module is the whole of NVFP4: names, config,
//! producers, reading back, activation emulation and calibration.
//!
//! The weights' global scale is shared by the layers vLLM fuses (llm-compressor
//! observers/helpers.py `FUSED_LAYER_NAMES`: q/k/v and gate/up): it is made from the amax of
//! every quantized member of the group, so each member reads its siblings once more.
//!
//! W4A4 (`NVFP4`): the activations are FP4 E2M1 too, quantized at run time per group of 16
//! with FP8 E4M3 group scales under one calibrated per-tensor global scale
//! (`input_activations`: `strategy: tensor_group`, `dynamic: local`, `observer:
//! static_minmax`). `input_global_scale` (F32, `[1]`) is compressed-tensors' `generate_gparam`
//! on the activation range the `static_minmax` observer kept over the calibration set, the same
//! formula as the weights' global scale: `gs = r(r(1 / amax) · 448·6)`
//! ([`fp4::nvfp4_global_scale`], `r` the model dtype's rounding). `amax` is the largest |x| seen
//! at the module's input, which `qforge calibrate --method fp8-static` records per module
//! (`input_amax`), so the FP8-static calibration run serves NVFP4 as is. vLLM stores it as a
//! divisor and inverts it on load (`CompressedTensorsW4A4Fp4.process_weights_after_loading`).

use std::collections::BTreeMap;

use qforge_codecs::fp4;
use qforge_codecs::DType;
use serde_json::{json, Value};

use super::fp4::{check_columns, fp4_packed, fp4_parts, packed_tensors};
use super::ModuleMemo;
use super::{
    codec_err, compressed_tensors_config, hf_module, run_error, ActEmulation, Cx, HfQuantOptions,
    HfScheme, LayoutScheme, Params,
};
use crate::dequant::Weights;
use crate::scheme::Calibration;
use qforge_convert::checkpoint::Checkpoint;
use qforge_convert::export::{OutTensor, Producer};
use qforge_convert::names::{LayerTensor, Part, TensorId};
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::{Error, Result};

/// FP4 weights, 16-bit activations (llm-compressor `NVFP4A16`).
pub static NVFP4A16: Nvfp4 = Nvfp4 { w4a4: false };

/// FP4 weights as [`NVFP4A16`] plus FP4 activations under a calibrated `input_global_scale`
/// (llm-compressor `NVFP4`, W4A4).
pub static NVFP4: Nvfp4 = Nvfp4 { w4a4: true };

/// The NVFP4 layouts.
#[derive(Debug)]
pub struct Nvfp4 {
    w4a4: bool,
}

/// The layers whose NVFP4 global scale llm-compressor fuses with `id`'s (itself included).
fn fused_group(id: TensorId) -> Vec<TensorId> {
    let TensorId::Layer { index, kind } = id else {
        return vec![id];
    };
    let kinds: &[LayerTensor] = match kind {
        LayerTensor::Q | LayerTensor::K | LayerTensor::V => {
            &[LayerTensor::Q, LayerTensor::K, LayerTensor::V]
        }
        LayerTensor::Gate | LayerTensor::Up => &[LayerTensor::Gate, LayerTensor::Up],
        _ => return vec![id],
    };
    kinds
        .iter()
        .map(|&kind| TensorId::Layer { index, kind })
        .collect()
}

/// The `quantization_config` weights arguments of both presets as `QuantizationArgs`
/// serializes them (keys sorted; `zp_dtype` dropped for symmetric args).
fn weight_args() -> Value {
    json!({"dynamic": false, "group_size": 16, "num_bits": 4,
           "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group",
           "symmetric": true, "type": "float"})
}

/// The `quantization_config` format, weights and input activations of `NVFP4` as
/// `QuantizationArgs` serializes them.
fn config() -> (&'static str, Value, Value) {
    (
        "nvfp4-pack-quantized",
        weight_args(),
        json!({"dynamic": "local", "group_size": 16, "num_bits": 4,
               "observer": "static_minmax", "scale_dtype": "torch.float8_e4m3fn",
               "strategy": "tensor_group", "symmetric": true, "type": "float"}),
    )
}

/// Check before any work that module `m` has a usable calibrated activation maximum.
fn check_amax(amax: Option<&BTreeMap<String, f32>>, m: &str) -> std::result::Result<(), String> {
    match amax.and_then(|a| a.get(m)) {
        Some(a) if a.is_finite() && *a > 0.0 => Ok(()),
        Some(a) => Err(format!("calibrated input amax of {m} is {a}")),
        None => Err(format!(
            "nvfp4 (W4A4) needs calibrated activation ranges: none for {m} (run `qforge \
             calibrate --method fp8-static` and pass --calib; nvfp4a16 needs none)"
        )),
    }
}

/// A one-F32 tensor `{module}.{part}`.
fn scalar<'a>(module: &str, part: &str, f: impl Fn() -> Result<f32> + 'a) -> OutTensor<'a> {
    OutTensor {
        spec: TensorSpec {
            name: format!("{module}.{part}"),
            dtype: DType::F32,
            shape: vec![1],
        },
        produce: Producer::Whole(Box::new(move |buf: &mut Vec<u8>| {
            buf.extend(f()?.to_le_bytes());
            Ok(())
        })),
    }
}

/// A module's one finite positive F32 `part` (`None`: absent).
fn positive_scalar(ckpt: &Checkpoint, id: TensorId, part: Part) -> Result<Option<f32>> {
    let Some(t) = ckpt.tensor_by_key(qforge_convert::TensorKey { id, part }) else {
        return Ok(None);
    };
    match ckpt.to_f32(t)?.as_slice() {
        [g] if g.is_finite() && *g > 0.0 => Ok(Some(*g)),
        other => Err(Error::BadQuantization {
            path: ckpt.path.clone(),
            tensor: t.name.clone(),
            reason: format!("{other:?} is not one finite positive value"),
        }),
    }
}

impl LayoutScheme for Nvfp4 {
    fn id(&self) -> &'static str {
        if self.w4a4 {
            "nvfp4"
        } else {
            "nvfp4a16"
        }
    }
    fn names(&self) -> &'static [&'static str] {
        if self.w4a4 {
            &["nvfp4"]
        } else {
            &["nvfp4a16"]
        }
    }
    fn presets(&self) -> &'static [(&'static str, &'static str, bool)] {
        if self.w4a4 {
            &[("NVFP4", "nvfp4", false)]
        } else {
            &[("NVFP4A16", "nvfp4a16", false)]
        }
    }
    fn storage_name(&self, _s: HfScheme) -> String {
        "nvfp4".into()
    }
    fn accepts(&self, _s: HfScheme, c: Calibration) -> bool {
        self.w4a4 && c == Calibration::Fp8Static
    }
    fn without_calibration(&self, _s: HfScheme) -> Option<HfScheme> {
        self.w4a4.then(|| HfScheme::new(&NVFP4A16, Params::NONE))
    }
    fn check_module(
        &self,
        _s: HfScheme,
        opts: &HfQuantOptions,
        ckpt: &Checkpoint,
        id: TensorId,
    ) -> Result<()> {
        check_columns(ckpt, id, fp4::NVFP4_GROUP)?;
        if self.w4a4 {
            check_amax(opts.input_amax.as_ref(), &hf_module(id)).map_err(|r| run_error(ckpt, r))?;
        }
        Ok(())
    }
    fn tensors<'a>(
        &self,
        _s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>> {
        let src = cx.src;
        let k = src
            .ckpt
            .config
            .expected_shape(id)
            .last()
            .copied()
            .unwrap_or(1) as usize;
        let group: Vec<TensorId> = fused_group(id)
            .into_iter()
            .filter(|m| cx.quantizes(*m))
            .collect();
        // read by weight_global_scale's producer and by the codes' quantization: once
        let global = ModuleMemo::new(2, move || -> Result<f32> {
            let mut amax = 0f32;
            for &m in &group {
                amax = src.rows(m)?.iter().fold(amax, |a, x| a.max(x.abs()));
            }
            Ok(fp4::nvfp4_global_scale(amax, src.arith))
        });
        let g2 = global.clone();
        let quant = move || -> Result<fp4::Fp4Packed> {
            let v = src.rows(id)?;
            fp4::quantize_nvfp4(&v, k, *g2.get()?, src.arith)
                .map_err(|e| codec_err(src.ckpt, id, e))
        };
        let mut out = packed_tensors(src, id, module, (fp4::NVFP4_GROUP, DType::F8_E4M3), quant);
        out.push(scalar(module, "weight_global_scale", move || {
            global.get().map(|g| *g)
        }));
        if self.w4a4 {
            let amax = cx
                .opts
                .input_amax
                .as_ref()
                .and_then(|a| a.get(module))
                .copied();
            let gs = fp4::nvfp4_global_scale(amax.expect("checked by check_module"), src.arith);
            out.push(scalar(module, "input_global_scale", move || Ok(gs)));
        }
        Ok(out)
    }
    fn write_config(&self, _s: HfScheme, opts: &HfQuantOptions, nc: &[String], c: &mut Value) {
        let group = if self.w4a4 {
            config()
        } else {
            ("nvfp4-pack-quantized", weight_args(), Value::Null)
        };
        c["quantization_config"] = compressed_tensors_config(opts, nc, group);
    }
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>> {
        // W4A4 is the same weights plus input_global_scale
        if self.w4a4 && w.part(id, Part::InputGlobalScale).is_none() {
            return None;
        }
        let parts = fp4_parts(w, id, DType::F8_E4M3, fp4::NVFP4_GROUP as u64)?;
        Some(parts.and_then(|(packed, _)| {
            let g = w.part(id, Part::WeightGlobalScale).ok_or_else(|| {
                w.bad(packed, "has no companion weight_global_scale tensor".into())
            })?;
            if g.dtype != DType::F32 || g.shape.iter().product::<u64>() != 1 {
                return Err(w.bad(g, "weight_global_scale must be one F32".into()));
            }
            Ok(Params::NONE)
        }))
    }
    /// NVFP4 in `f32` as compressed-tensors computes it before the cast to the model dtype
    /// (`qforge_codecs::fp4::dequantize_nvfp4`).
    fn dequant(&self, _s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>> {
        let p = fp4_packed(w, id)?;
        let g = w
            .part(id, Part::WeightGlobalScale)
            .expect("checked by detect");
        let gs = w.to_f32(g)?[0];
        if !(gs.is_finite() && gs > 0.0) {
            return Err(w.bad(g, format!("global scale is {gs} (must be finite and > 0)")));
        }
        fp4::dequantize_nvfp4(&p, gs).map_err(|source| Error::Codec {
            path: w.path.clone(),
            tensor: w
                .part(id, Part::WeightPacked)
                .expect("checked")
                .name
                .clone(),
            source,
        })
    }
    /// W4A4: FP4 activations under the calibrated `input_global_scale`; NVFP4A16: none.
    fn act_emulation(
        &self,
        _s: HfScheme,
        ckpt: &Checkpoint,
        id: TensorId,
        _w8a8: Option<Option<f32>>,
    ) -> Result<ActEmulation> {
        Ok(match positive_scalar(ckpt, id, Part::InputGlobalScale)? {
            Some(gs) if self.w4a4 => ActEmulation::Nvfp4 { gs },
            _ => ActEmulation::None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qforge_codecs::int4::Int4Arith;

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

    /// The names and presets mean NVFP4's two schemes (llm-compressor's `NVFP4`, `NVFP4A16`);
    /// a typo gets the closest name; W4A4 takes the FP8-static calibration run's activation
    /// ranges and is planned as NVFP4A16 until they exist.
    #[test]
    fn names_presets_and_calibration() {
        use crate::scheme::{CalibInput, Scheme};
        let p = |s| Scheme::parse(s, false).unwrap();
        let fixed = |k: &'static Nvfp4| Scheme::Hf(HfScheme::new(k, Params::NONE));
        assert_eq!(p("NVFP4A16"), fixed(&NVFP4A16));
        assert_eq!(p("NVFP4"), fixed(&NVFP4));
        assert_eq!(p("nvfp4a16"), fixed(&NVFP4A16));
        let e = Scheme::parse("nvfp4a8", false).unwrap_err().to_string();
        assert!(e.contains("did you mean") && e.contains("nvfp4a16"), "{e}");
        assert_eq!(p("NVFP4").name(), "nvfp4");
        assert_eq!(p("nvfp4a16").name(), "nvfp4a16");
        assert_eq!(
            p("nvfp4").accepts(Calibration::Fp8Static),
            Some(CalibInput::Calib)
        );
        assert_eq!(p("nvfp4a16").accepts(Calibration::Fp8Static), None);
        assert_eq!(p("NVFP4").without_calibration(), Some(p("nvfp4a16")));
        assert_eq!(p("nvfp4a16").without_calibration(), None);
    }
}

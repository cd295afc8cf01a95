//! Schemes: one type that names every way qforge quantizes a model, and what each one
//! accepts and costs.
//!
//! A [`Scheme`] is an HF layout scheme ([`HfScheme`]: a layout of [`LAYOUTS`], each a module of
//! [`crate::layout`] that owns its names, presets, producers, config, reading back, calibration
//! and memory) or a llama.cpp mix ([`GgufMix`]; producers in [`crate::gguf_mix`]). This module
//! parses the names users type (asking each layout; llama.cpp's type names; closest-name
//! suggestions) and forwards what a scheme accepts ([`Scheme::accepts`]) and keeps resident
//! ([`Scheme::resident_bytes`], what `qforge plan` predicts) to the layout. The CLI asks the
//! scheme; it does not match on names.

use qforge_codecs::DType;
use qforge_convert::export::{source_resident, streams, STREAMED_BYTES};
use qforge_convert::{Checkpoint, TensorId, TensorKey, TensorLayout};

use crate::gguf_mix::GgufMix;
use crate::layout::{HfScheme, LAYOUTS};

/// A scheme name that is not one (the message names the closest valid ones), or a preset
/// qforge does not write (the message says what to use instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemeError(pub String);

/// A calibration method's result (`qforge calibrate --method …`, a recipe's `[calibrate]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// Static per-tensor FP8 input scales (`fp8-static`): a JSON file with `input_scales`.
    Fp8Static,
    /// GPTQ codes (`gptq`): a directory of integer codes and scales.
    Gptq,
    /// AWQ scales (`awq`): a directory of per-channel scales folded into the weights.
    Awq,
    /// An importance matrix (`imatrix`): llama-imatrix's GGUF or `.dat`.
    Imatrix,
}

impl Calibration {
    /// The method's name as `--method` and recipes spell it.
    pub fn from_name(s: &str) -> Option<Calibration> {
        match s {
            "fp8-static" => Some(Calibration::Fp8Static),
            "gptq" => Some(Calibration::Gptq),
            "awq" => Some(Calibration::Awq),
            "imatrix" => Some(Calibration::Imatrix),
            _ => None,
        }
    }
}

/// What a calibration directory was made for (read from its index by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibrated {
    /// GPTQ codes of `bits` in groups of `group_size` (`None`: per row), symmetric.
    Gptq {
        /// code width
        bits: u8,
        /// columns per scale
        group_size: Option<usize>,
    },
    /// AWQ scales searched for INT4 in groups of `group_size`.
    Awq {
        /// columns per scale
        group_size: Option<usize>,
        /// symmetric codes
        symmetric: bool,
    },
}

/// Why calibration results do not fit a scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalibMismatch {
    /// Results of a kind the scheme cannot use: what they are and which schemes take them.
    Kind(&'static str),
    /// Results of the right kind made for another scheme (its name).
    MadeFor(String),
}

/// How a quantize step takes a calibration result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibInput {
    /// As `--calib` (FP8 input scales, GPTQ codes, AWQ scales).
    Calib,
    /// As `--imatrix` (an importance matrix for llama.cpp's quantizers).
    Imatrix,
}

/// A quantization scheme: what `--scheme` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// An HF layout scheme.
    Hf(HfScheme),
    /// A GGUF mix.
    Gguf(GgufMix),
}

/// qforge's own scheme names (the fixed ones; `int4-g<N>` and `int8-g<N>` take any group
/// size), from every layout of [`LAYOUTS`].
pub fn names() -> Vec<&'static str> {
    LAYOUTS
        .iter()
        .flat_map(|k| k.names().iter().copied())
        .collect()
}

/// llm-compressor's preset schemes, accepted with the same meaning (compressed-tensors
/// `quantization/quant_scheme.py`, `PRESET_SCHEMES`): preset → (qforge scheme, asymmetric),
/// each listed by its layout's module. llama.cpp's type names (`Q4_K_M`, …) are [`GgufMix`]'s
/// own.
fn presets() -> impl Iterator<Item = &'static (&'static str, &'static str, bool)> {
    LAYOUTS.iter().flat_map(|k| k.presets().iter())
}

/// Presets qforge does not write, with what to use instead (a same-meaning alias is impossible).
const NOT_WRITTEN: &[(&str, &str)] = &[
    (
        "W8A8",
        "W8A8 (INT8 weights and dynamic INT8 activations) is not written; \
         --scheme int8-row writes the same weights, --scheme fp8-rowwise is the FP8 W8A8",
    ),
    (
        "INT8",
        "INT8 (llm-compressor's alias of W8A8) is not written; --scheme int8-row writes the same \
         weights, --scheme fp8-rowwise is the FP8 W8A8",
    ),
    ("W4AFP8", "W4AFP8 (INT4 weights, FP8 activations) is not written; --scheme int4-g128 writes the same weights"),
];

/// A name compared the way users type them: case and `-`/`_` do not matter.
fn fold(s: &str) -> String {
    s.trim().to_ascii_lowercase().replace('_', "-")
}

/// The valid names closest to `s` (edit distance on folded names), at most three.
fn closest(s: &str) -> Vec<String> {
    let t = fold(s);
    let mut all: Vec<String> = names().iter().map(|n| (*n).to_owned()).collect();
    all.extend(presets().map(|(p, _, _)| (*p).to_owned()));
    all.extend(
        GgufMix::ALL
            .iter()
            .map(|m| format!("gguf:{}", m.name().to_ascii_lowercase())),
    );
    let mut scored: Vec<(usize, String)> = all
        .into_iter()
        .map(|n| {
            let f = fold(&n);
            let d = strsim::levenshtein(&t, &f).min(strsim::levenshtein(
                &t,
                f.strip_prefix("gguf:").unwrap_or(&f),
            ));
            (d, n)
        })
        .filter(|(d, n)| *d <= (n.len() / 2).max(2))
        .collect();
    // stable: at equal distance qforge's own names come first; a preset spelling the same
    // name as one of ours (MXFP4 = mxfp4) is not offered twice
    scored.sort_by_key(|(d, _)| *d);
    let mut seen = std::collections::BTreeSet::new();
    scored
        .into_iter()
        .filter(|(_, n)| seen.insert(fold(n)))
        .take(3)
        .map(|(_, n)| n)
        .collect()
}

impl Scheme {
    /// Parse a scheme name (see `qforge quantize --help`): qforge's names, llm-compressor's
    /// presets ([`presets`]) and llama.cpp's mix names, with or without `gguf:`; `asym` asks for
    /// asymmetric integer codes.
    pub fn parse(s: &str, asym: bool) -> Result<Scheme, SchemeError> {
        parse(s, asym)
    }

    /// The HF layout scheme, if the scheme is one.
    pub fn hf(self) -> Option<HfScheme> {
        match self {
            Scheme::Hf(h) => Some(h),
            Scheme::Gguf(_) => None,
        }
    }

    /// Whether the scheme writes one GGUF file (else a Hugging Face directory).
    pub fn writes_gguf(self) -> bool {
        matches!(self, Scheme::Gguf(_))
    }

    /// Whether a calibration result applies to this scheme, and how a quantize step takes it
    /// (`None`: it does not apply).
    pub fn accepts(self, c: Calibration) -> Option<CalibInput> {
        match self {
            Scheme::Gguf(_) => (c == Calibration::Imatrix).then_some(CalibInput::Imatrix),
            Scheme::Hf(h) => h.kind.accepts(h, c).then_some(CalibInput::Calib),
        }
    }

    /// The scheme's qforge name (`fp8-rowwise`, `int4-g64`, `int8-row`, `gguf:q4_k_m`; an
    /// asymmetric integer scheme adds ` --asym`).
    pub fn name(self) -> String {
        match self {
            Scheme::Gguf(m) => format!("gguf:{}", m.name().to_ascii_lowercase()),
            Scheme::Hf(h) => h.name(),
        }
    }

    /// The scheme planned in place of one that needs calibration results not made yet (a
    /// recipe's `[calibrate]` step): the same weights without the calibrated tensors
    /// (`fp8-static` → `fp8-rowwise`, `nvfp4` → `nvfp4a16`); `None` when none is needed.
    pub fn without_calibration(self) -> Option<Scheme> {
        match self {
            Scheme::Hf(h) => h.kind.without_calibration(h).map(Scheme::Hf),
            Scheme::Gguf(_) => None,
        }
    }

    /// Whether calibration results made for `c` fit this scheme (GPTQ codes: the same symmetric
    /// integer scheme; AWQ scales: the same INT4 scheme).
    pub fn check_calibrated(self, c: Calibrated) -> Result<(), CalibMismatch> {
        if let Scheme::Hf(h) = self {
            if let Some(r) = h.kind.check_calibrated(h, c) {
                return r;
            }
        }
        Err(CalibMismatch::Kind(match c {
            Calibrated::Awq { .. } => {
                "AWQ scales (searched for INT4): use --scheme int4-g<N> or int4-row"
            }
            Calibrated::Gptq { .. } => {
                "GPTQ codes: use --scheme int4-g<N>, int4-row, int8-g<N> or int8-row (symmetric)"
            }
        }))
    }

    /// Bytes the writer keeps resident while it produces role `id` of `ckpt`: the source
    /// (mapped pages, or the gathered copy of a merged tensor) plus its working buffers.
    /// `quantized`: the role is quantized by this scheme (else copied or converted to
    /// `out_dtype`); for a GGUF mix `out_dtype` is the ggml type chosen for it.
    pub fn resident_bytes(
        self,
        ckpt: &Checkpoint,
        id: TensorId,
        quantized: bool,
        out_dtype: DType,
    ) -> u64 {
        let src = ckpt.role_bytes(id);
        let n: u64 = ckpt.config.expected_shape(id).iter().product();
        let out = out_dtype.bytes_for(n).unwrap_or(0);
        let weight = ckpt.tensors.iter().find(|t| t.key == TensorKey::weight(id));
        let resident = weight.map_or(src, source_resident);
        match self {
            Scheme::Gguf(_) => resident + out,
            Scheme::Hf(_) if !quantized => kept_work(ckpt, id, out_dtype, src, out),
            Scheme::Hf(h) => resident + h.kind.work_bytes(h, weight, n),
        }
    }
}

/// Memory held while a kept tensor is copied or converted into its shard: the source plus,
/// for a copy that streams, two row blocks, for a conversion the converted bytes (a
/// same-dtype merged tensor is moved, not copied).
fn kept_work(ckpt: &Checkpoint, id: TensorId, out_dtype: DType, src: u64, out: u64) -> u64 {
    let t = ckpt.tensors.iter().find(|t| t.key == TensorKey::weight(id));
    match t {
        Some(t) if t.dtype == out_dtype && streams(t) => source_resident(t) + STREAMED_BYTES,
        Some(t) if t.dtype == out_dtype => match t.layout {
            TensorLayout::Contiguous(_) => source_resident(t) + src,
            _ => source_resident(t),
        },
        Some(t) => source_resident(t) + out,
        None => src + out,
    }
}

/// Parse `--scheme` (see `qforge quantize --help`): qforge's names, llm-compressor's presets
/// ([`presets`]) and llama.cpp's mix names, with or without `gguf:`; each layout of [`LAYOUTS`]
/// parses its own.
fn parse(s: &str, asym: bool) -> Result<Scheme, SchemeError> {
    let mut t = fold(s);
    let mut asym = asym;
    if let Some((_, name, preset_asym)) = presets().find(|(p, _, _)| fold(p) == t) {
        t = (*name).to_owned();
        asym |= preset_asym;
    } else if let Some((_, why)) = NOT_WRITTEN.iter().find(|(p, _)| fold(p) == t) {
        return Err(SchemeError(format!("--scheme {s}: {why}")));
    }
    for kind in LAYOUTS {
        match kind.parse(&t, asym) {
            Some(Ok(p)) => return Ok(Scheme::Hf(HfScheme::new(*kind, p))),
            Some(Err(SchemeError(e))) => return Err(SchemeError(format!("--scheme {s}: {e}"))),
            None => {}
        }
    }
    let mix = t.strip_prefix("gguf:").unwrap_or(&t).replace('-', "_");
    if let Some(m) = GgufMix::parse(&mix) {
        return Ok(Scheme::Gguf(m));
    }
    let near = closest(s);
    let hint = if near.is_empty() {
        format!(
            "use {}, int4-g<N> (e.g. int4-g128), int8-g<N>, an llm-compressor preset \
             (FP8_DYNAMIC, W4A16, …) or a llama.cpp type (Q4_K_M, Q8_0, …)",
            names().join(", ")
        )
    } else {
        format!("did you mean {}?", near.join(", "))
    };
    Err(SchemeError(format!(
        "unknown --scheme {s:?}\n  hint: {hint}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{fp4, fp8, fp8_block, int, Params};

    fn int_scheme(bits: u8, group_size: Option<usize>, symmetric: bool) -> Scheme {
        Scheme::Hf(HfScheme::new(
            &int::INT,
            Params {
                bits,
                group_size,
                symmetric,
            },
        ))
    }

    fn fixed(kind: &'static dyn crate::layout::LayoutScheme) -> Scheme {
        Scheme::Hf(HfScheme::new(kind, Params::NONE))
    }

    #[test]
    fn schemes() {
        assert_eq!(
            Scheme::parse("int4-g64", false).unwrap(),
            int_scheme(4, Some(64), true)
        );
        assert_eq!(
            Scheme::parse("int8-row", false).unwrap(),
            int_scheme(8, None, true)
        );
        assert!(Scheme::parse("int8-g0", false).is_err());
        assert_eq!(
            Scheme::parse("gguf:Q4_K_M", false).unwrap(),
            Scheme::Gguf(GgufMix::Q4_K_M)
        );
        assert_eq!(
            Scheme::parse("fp8-rowwise", false).unwrap(),
            fixed(&fp8::FP8_ROWWISE)
        );
        assert!(Scheme::parse("int4-g0", false).is_err());
        assert!(Scheme::parse("fp4", false).is_err());
        assert_eq!(Scheme::parse("mxfp4", false).unwrap(), fixed(&fp4::MXFP4));
    }

    /// llm-compressor's presets mean what compressed-tensors' `PRESET_SCHEMES` says; llama.cpp
    /// names work with or without `gguf:`; unknown names list the closest valid ones.
    #[test]
    fn aliases_and_suggestions() {
        let int = int_scheme;
        let cases = [
            ("FP8_DYNAMIC", fixed(&fp8::FP8_ROWWISE)),
            ("fp8-dynamic", fixed(&fp8::FP8_ROWWISE)),
            ("FP8", fixed(&fp8::FP8_STATIC)),
            ("FP8_BLOCK", fixed(&fp8_block::FP8_BLOCK)),
            ("W4A16", int(4, Some(128), true)),
            ("W4A16_ASYM", int(4, Some(128), false)),
            ("w8a16", int(8, Some(128), true)),
            ("MXFP4", fixed(&fp4::MXFP4)),
            ("MXFP4A16", fixed(&fp4::MXFP4A16)),
            ("Q4_K_M", Scheme::Gguf(GgufMix::Q4_K_M)),
            ("q8_0", Scheme::Gguf(GgufMix::Q8_0)),
            ("gguf:Q6_K", Scheme::Gguf(GgufMix::Q6_K)),
        ];
        for (name, want) in cases {
            assert_eq!(Scheme::parse(name, false).unwrap(), want, "{name}");
        }
        for (name, words) in [("W8A8", "int8-row"), ("int8", "int8-row")] {
            let e = Scheme::parse(name, false).unwrap_err().to_string();
            assert!(
                e.contains("not written") && e.contains(words),
                "{name}: {e}"
            );
        }
        for (typo, want) in [
            ("fp8-rowise", "fp8-rowwise"),
            ("Q4_K_N", "gguf:q4_k_m"),
            ("W4A61", "W4A16"),
        ] {
            let e = Scheme::parse(typo, false).unwrap_err().to_string();
            assert!(
                e.contains("did you mean") && e.contains(want),
                "{typo}: {e}"
            );
        }
        let e = Scheme::parse("zzzzzzzzzzzzzzzz", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hint: use fp8-rowwise"), "{e}");
    }

    /// Calibration results fit only the scheme they were made for; the accepted calibrations
    /// and canonical names follow the scheme.
    #[test]
    fn calibration_fits_its_scheme() {
        let p = |s| Scheme::parse(s, false).unwrap();
        let gptq = Calibrated::Gptq {
            bits: 4,
            group_size: Some(64),
        };
        assert_eq!(p("int4-g64").check_calibrated(gptq), Ok(()));
        assert_eq!(
            p("int4-g128").check_calibrated(gptq),
            Err(CalibMismatch::MadeFor("int4-g64".into()))
        );
        assert!(matches!(
            p("fp8-rowwise").check_calibrated(gptq),
            Err(CalibMismatch::Kind(k)) if k.starts_with("GPTQ codes")
        ));
        let awq = Calibrated::Awq {
            group_size: Some(64),
            symmetric: false,
        };
        assert_eq!(
            Scheme::parse("int4-g64", true)
                .unwrap()
                .check_calibrated(awq),
            Ok(())
        );
        assert_eq!(
            p("int4-g64").check_calibrated(awq),
            Err(CalibMismatch::MadeFor("int4-g64 --asym".into()))
        );
        assert!(matches!(
            p("int8-g64").check_calibrated(awq),
            Err(CalibMismatch::Kind(k)) if k.starts_with("AWQ scales")
        ));
        assert_eq!(p("W4A16").name(), "int4-g128");
        assert_eq!(p("Q4_K_M").name(), "gguf:q4_k_m");
        for name in names() {
            assert_eq!(p(name).name(), *name);
        }
        let calib = |s, c| p(s).accepts(c);
        assert_eq!(
            calib("fp8-static", Calibration::Fp8Static),
            Some(CalibInput::Calib)
        );
        assert_eq!(
            calib("int8-row", Calibration::Gptq),
            Some(CalibInput::Calib)
        );
        assert_eq!(calib("int8-row", Calibration::Awq), None);
        assert_eq!(
            calib("q4_k_m", Calibration::Imatrix),
            Some(CalibInput::Imatrix)
        );
        assert!(p("q8_0").writes_gguf() && !p("fp8-block").writes_gguf());
        assert_eq!(p("FP8").without_calibration(), Some(p("fp8-rowwise")));
        assert_eq!(p("int4-g64").without_calibration(), None);
    }
}

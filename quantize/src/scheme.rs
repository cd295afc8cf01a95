//! Schemes: one type that names every way qforge quantizes a model, and what each one
//! accepts and costs.
//!
//! A [`Scheme`] is an HF layout scheme ([`HfScheme`]: compressed-tensors, fbgemm_fp8, MLX;
//! producers in [`crate::layout`] and its per-family modules) or a llama.cpp mix ([`GgufMix`];
//! producers in [`crate::gguf_mix`]). This module owns the names users type (qforge's own,
//! llm-compressor's presets and llama.cpp's type names, with closest-name suggestions), which
//! calibration results a scheme takes ([`Scheme::accepts`]) and the memory its writer keeps
//! resident per tensor ([`Scheme::resident_bytes`], what `qforge plan` predicts). The CLI asks
//! the scheme; it does not match on names.

use qforge_codecs::DType;
use qforge_convert::export::{source_resident, streams, STREAMED_BYTES};
use qforge_convert::{Checkpoint, TensorId, TensorKey, TensorLayout};

use crate::gguf_mix::GgufMix;
use crate::layout::HfScheme;

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

/// qforge's own scheme names (the fixed ones; `int4-g<N>` and `int8-g<N>` take any group size).
const NAMES: &[&str] = &[
    "fp8-rowwise",
    "fp8-static",
    "fp8-block",
    "nvfp4",
    "nvfp4a16",
    "mxfp4",
    "mxfp4a16",
    "int4-g32",
    "int4-g64",
    "int4-g128",
    "int4-row",
    "int8-g32",
    "int8-g64",
    "int8-g128",
    "int8-row",
];

/// llm-compressor's preset schemes, accepted with the same meaning (compressed-tensors
/// `quantization/quant_scheme.py`, `PRESET_SCHEMES`): preset → (qforge scheme, asymmetric).
/// `FP8` is per-tensor FP8 weights with static per-tensor activations (= `fp8-static`);
/// `FP8_DYNAMIC` per-channel weights with dynamic per-token activations (= `fp8-rowwise`);
/// `W4A16`/`W8A16` are group-128 symmetric integer weights. llama.cpp's type names (`Q4_K_M`, …)
/// are [`GgufMix`]'s own.
const PRESETS: &[(&str, &str, bool)] = &[
    ("FP8", "fp8-static", false),
    ("FP8_DYNAMIC", "fp8-rowwise", false),
    ("FP8_BLOCK", "fp8-block", false),
    ("W4A16", "int4-g128", false),
    ("W4A16_ASYM", "int4-g128", true),
    ("W8A16", "int8-g128", false),
    ("NVFP4", "nvfp4", false),
    ("NVFP4A16", "nvfp4a16", false),
    ("MXFP4", "mxfp4", false),
    ("MXFP4A16", "mxfp4a16", false),
];

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
    let mut all: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    all.extend(PRESETS.iter().map(|(p, _, _)| (*p).to_owned()));
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
    /// presets ([`PRESETS`]) and llama.cpp's mix names, with or without `gguf:`; `asym` asks for
    /// asymmetric integer codes.
    pub fn parse(s: &str, asym: bool) -> Result<Scheme, SchemeError> {
        parse(s, asym)
    }

    /// Whether the scheme writes one GGUF file (else a Hugging Face directory).
    pub fn writes_gguf(self) -> bool {
        matches!(self, Scheme::Gguf(_))
    }

    /// Whether a calibration result applies to this scheme, and how a quantize step takes it
    /// (`None`: it does not apply).
    pub fn accepts(self, c: Calibration) -> Option<CalibInput> {
        match (c, self) {
            (Calibration::Imatrix, Scheme::Gguf(_)) => Some(CalibInput::Imatrix),
            (Calibration::Fp8Static, Scheme::Hf(HfScheme::Fp8Static | HfScheme::Nvfp4))
            | (Calibration::Gptq, Scheme::Hf(HfScheme::Int4 { .. }))
            | (Calibration::Awq, Scheme::Hf(HfScheme::Int4 { bits: 4, .. })) => {
                Some(CalibInput::Calib)
            }
            _ => None,
        }
    }

    /// The scheme's qforge name (`fp8-rowwise`, `int4-g64`, `int8-row`, `gguf:q4_k_m`; an
    /// asymmetric integer scheme adds ` --asym`).
    pub fn name(self) -> String {
        match self {
            Scheme::Gguf(m) => format!("gguf:{}", m.name().to_ascii_lowercase()),
            Scheme::Hf(HfScheme::Int4 {
                bits,
                group_size,
                symmetric,
            }) => format!(
                "{}{}",
                int_name(bits, group_size),
                if symmetric { "" } else { " --asym" }
            ),
            Scheme::Hf(HfScheme::Fp8Rowwise) => "fp8-rowwise".into(),
            Scheme::Hf(HfScheme::Fp8Static) => "fp8-static".into(),
            Scheme::Hf(HfScheme::Fp8Block) => "fp8-block".into(),
            Scheme::Hf(HfScheme::Nvfp4A16) => "nvfp4a16".into(),
            Scheme::Hf(HfScheme::Nvfp4) => "nvfp4".into(),
            Scheme::Hf(HfScheme::Mxfp4 { a16 }) => if a16 { "mxfp4a16" } else { "mxfp4" }.into(),
        }
    }

    /// The scheme planned in place of one that needs calibration results not made yet (a
    /// recipe's `[calibrate]` step): the same weights without the calibrated tensors
    /// (`fp8-static` → `fp8-rowwise`, `nvfp4` → `nvfp4a16`); `None` when none is needed.
    pub fn without_calibration(self) -> Option<Scheme> {
        match self {
            Scheme::Hf(HfScheme::Fp8Static) => Some(Scheme::Hf(HfScheme::Fp8Rowwise)),
            Scheme::Hf(HfScheme::Nvfp4) => Some(Scheme::Hf(HfScheme::Nvfp4A16)),
            _ => None,
        }
    }

    /// Whether calibration results made for `c` fit this scheme (GPTQ codes: the same symmetric
    /// integer scheme; AWQ scales: the same INT4 scheme).
    pub fn check_calibrated(self, c: Calibrated) -> Result<(), CalibMismatch> {
        match (c, self) {
            (
                Calibrated::Awq {
                    group_size,
                    symmetric,
                },
                Scheme::Hf(HfScheme::Int4 { bits: 4, .. }),
            ) => {
                let made = Scheme::Hf(HfScheme::Int4 {
                    bits: 4,
                    group_size,
                    symmetric,
                });
                (made == self)
                    .then_some(())
                    .ok_or(CalibMismatch::MadeFor(made.name()))
            }
            (Calibrated::Awq { .. }, _) => Err(CalibMismatch::Kind(
                "AWQ scales (searched for INT4): use --scheme int4-g<N> or int4-row",
            )),
            (
                Calibrated::Gptq { bits, group_size },
                Scheme::Hf(HfScheme::Int4 {
                    symmetric: true, ..
                }),
            ) => {
                let made = Scheme::Hf(HfScheme::Int4 {
                    bits,
                    group_size,
                    symmetric: true,
                });
                (made == self)
                    .then_some(())
                    .ok_or(CalibMismatch::MadeFor(made.name()))
            }
            (Calibrated::Gptq { .. }, _) => Err(CalibMismatch::Kind(
                "GPTQ codes: use --scheme int4-g<N>, int4-row, int8-g<N> or int8-row (symmetric)",
            )),
        }
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
            // f32 decode + codes (one byte each) + packed codes + scales
            Scheme::Hf(HfScheme::Int4 { bits, .. }) => {
                resident + 4 * n + n + n * u64::from(bits) / 8
            }
            // FP8 rowwise codes stream from a plain mapped source (two row blocks); per-tensor
            // ones, or from another source, one byte each
            Scheme::Hf(HfScheme::Fp8Rowwise) if weight.is_some_and(streams) => {
                resident + STREAMED_BYTES
            }
            Scheme::Hf(_) => resident + n,
        }
    }
}

/// The `--scheme` spelling of an integer scheme: `int4-g64`, `int8-row`.
fn int_name(bits: u8, group_size: Option<usize>) -> String {
    match group_size {
        Some(g) => format!("int{bits}-g{g}"),
        None => format!("int{bits}-row"),
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
/// ([`PRESETS`]) and llama.cpp's mix names, with or without `gguf:`.
fn parse(s: &str, asym: bool) -> Result<Scheme, SchemeError> {
    let mut t = fold(s);
    let mut asym = asym;
    if let Some((_, name, preset_asym)) = PRESETS.iter().find(|(p, _, _)| fold(p) == t) {
        t = (*name).to_owned();
        asym |= preset_asym;
    } else if let Some((_, why)) = NOT_WRITTEN.iter().find(|(p, _)| fold(p) == t) {
        return Err(SchemeError(format!("--scheme {s}: {why}")));
    }
    let int = |bits, group_size| {
        Ok(Scheme::Hf(HfScheme::Int4 {
            bits,
            group_size,
            symmetric: !asym,
        }))
    };
    match t.as_str() {
        "fp8-rowwise" => return Ok(Scheme::Hf(HfScheme::Fp8Rowwise)),
        "fp8-static" => return Ok(Scheme::Hf(HfScheme::Fp8Static)),
        "fp8-block" => return Ok(Scheme::Hf(HfScheme::Fp8Block)),
        "nvfp4" => return Ok(Scheme::Hf(HfScheme::Nvfp4)),
        "nvfp4a16" => return Ok(Scheme::Hf(HfScheme::Nvfp4A16)),
        "mxfp4" => return Ok(Scheme::Hf(HfScheme::Mxfp4 { a16: false })),
        "mxfp4a16" => return Ok(Scheme::Hf(HfScheme::Mxfp4 { a16: true })),
        "int4" => return int(4, Some(qforge_codecs::int4::DEFAULT_GROUP_SIZE)),
        "int4-row" | "int4-channel" => return int(4, None),
        "int8-row" | "int8-channel" => return int(8, None),
        _ => {}
    }
    for (prefix, bits) in [("int4-g", 4), ("int8-g", 8)] {
        if let Some(g) = t.strip_prefix(prefix) {
            let g: usize = g.parse().ok().filter(|g| *g > 0).ok_or_else(|| {
                SchemeError(format!(
                    "--scheme {s}: group size must be a positive integer"
                ))
            })?;
            return int(bits, Some(g));
        }
    }
    let mix = t.strip_prefix("gguf:").unwrap_or(&t).replace('-', "_");
    if let Some(m) = GgufMix::parse(&mix) {
        return Ok(Scheme::Gguf(m));
    }
    let near = closest(s);
    let hint = if near.is_empty() {
        "use fp8-rowwise, fp8-static, fp8-block, int4-g<N> (e.g. int4-g128), int4-row, \
         int8-g<N>, int8-row, nvfp4, nvfp4a16, mxfp4, mxfp4a16, an llm-compressor preset (FP8_DYNAMIC, \
         W4A16, …) or a llama.cpp type (Q4_K_M, Q8_0, …)"
            .to_owned()
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

    #[test]
    fn schemes() {
        assert_eq!(
            Scheme::parse("int4-g64", false).unwrap(),
            Scheme::Hf(HfScheme::Int4 {
                bits: 4,
                group_size: Some(64),
                symmetric: true
            })
        );
        assert_eq!(
            Scheme::parse("int8-row", false).unwrap(),
            Scheme::Hf(HfScheme::Int4 {
                bits: 8,
                group_size: None,
                symmetric: true
            })
        );
        assert!(Scheme::parse("int8-g0", false).is_err());
        assert_eq!(
            Scheme::parse("gguf:Q4_K_M", false).unwrap(),
            Scheme::Gguf(GgufMix::Q4_K_M)
        );
        assert_eq!(
            Scheme::parse("fp8-rowwise", false).unwrap(),
            Scheme::Hf(HfScheme::Fp8Rowwise)
        );
        assert!(Scheme::parse("int4-g0", false).is_err());
        assert!(Scheme::parse("fp4", false).is_err());
        assert_eq!(
            Scheme::parse("NVFP4A16", false).unwrap(),
            Scheme::Hf(HfScheme::Nvfp4A16)
        );
        assert_eq!(
            Scheme::parse("mxfp4", false).unwrap(),
            Scheme::Hf(HfScheme::Mxfp4 { a16: false })
        );
    }

    /// llm-compressor's presets mean what compressed-tensors' `PRESET_SCHEMES` says; llama.cpp
    /// names work with or without `gguf:`; unknown names list the closest valid ones.
    #[test]
    fn aliases_and_suggestions() {
        let int = |bits, g, symmetric| {
            Scheme::Hf(HfScheme::Int4 {
                bits,
                group_size: g,
                symmetric,
            })
        };
        let cases = [
            ("FP8_DYNAMIC", Scheme::Hf(HfScheme::Fp8Rowwise)),
            ("fp8-dynamic", Scheme::Hf(HfScheme::Fp8Rowwise)),
            ("FP8", Scheme::Hf(HfScheme::Fp8Static)),
            ("FP8_BLOCK", Scheme::Hf(HfScheme::Fp8Block)),
            ("W4A16", int(4, Some(128), true)),
            ("W4A16_ASYM", int(4, Some(128), false)),
            ("w8a16", int(8, Some(128), true)),
            ("NVFP4", Scheme::Hf(HfScheme::Nvfp4)),
            ("NVFP4A16", Scheme::Hf(HfScheme::Nvfp4A16)),
            ("MXFP4", Scheme::Hf(HfScheme::Mxfp4 { a16: false })),
            ("MXFP4A16", Scheme::Hf(HfScheme::Mxfp4 { a16: true })),
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
            ("nvfp4a8", "nvfp4a16"),
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
        assert_eq!(p("NVFP4").name(), "nvfp4");
        for name in NAMES {
            assert_eq!(p(name).name(), *name);
        }
        let calib = |s, c| p(s).accepts(c);
        assert_eq!(
            calib("fp8-static", Calibration::Fp8Static),
            Some(CalibInput::Calib)
        );
        assert_eq!(
            calib("nvfp4", Calibration::Fp8Static),
            Some(CalibInput::Calib)
        );
        assert_eq!(calib("nvfp4a16", Calibration::Fp8Static), None);
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
        assert_eq!(p("NVFP4").without_calibration(), Some(p("nvfp4a16")));
        assert_eq!(p("int4-g64").without_calibration(), None);
    }
}

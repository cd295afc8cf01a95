//! What a quantized HF layout is: the [`LayoutScheme`] trait every layout module implements,
//! and [`HfScheme`], one layout with its parameters (the value `--scheme` parses to and the
//! value read back from a checkpoint's tensors: one type for both).
//!
//! A layout module owns, in one place: its names and llm-compressor presets, which tensors it
//! quantizes, its tensor producers, the `quantization_config` it writes, how a checkpoint in
//! that layout is recognised and dequantized, the activation emulation verify applies, the bytes
//! it keeps resident and which calibration results it accepts. The central code keeps one list
//! of them ([`super::LAYOUTS`]) and asks; it does not match on layouts.

use std::collections::BTreeSet;

use qforge_codecs::DType;
use serde_json::Value;

use super::{fp4::Source, HfQuantOptions};
use crate::dequant::{WeightRead, Weights};
use crate::scheme::{CalibMismatch, Calibrated, Calibration, SchemeError};
use qforge_convert::checkpoint::{Checkpoint, TensorEntry};
use qforge_convert::export::OutTensor;
use qforge_convert::names::TensorId;
use qforge_convert::Result;

/// The parameters of a layout, carried once: the code width, the columns per scale (`None`: one
/// scale per row) and symmetric codes. Layouts that have none use [`Params::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    /// code width (integer and MLX layouts; 0 where the layout fixes it)
    pub bits: u8,
    /// columns per scale; `None` = per row (or fixed by the layout)
    pub group_size: Option<usize>,
    /// symmetric codes (no zero points)
    pub symmetric: bool,
}

impl Params {
    /// No parameters: the layout fixes everything.
    pub const NONE: Params = Params {
        bits: 0,
        group_size: None,
        symmetric: true,
    };
}

/// The activation quantization vLLM applies in front of a linear of this layout, which
/// `qforge verify` emulates (chosen by the layout, interpreted by verify).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActEmulation {
    /// Activations used as they are.
    None,
    /// Dynamic per-token FP8 with an optional amax upper bound (`fbgemm_fp8`'s
    /// `activation_scale_ub`).
    Fp8Token {
        /// the amax cap
        ub: Option<f32>,
    },
    /// Dynamic per-token-group FP8 (groups of 128).
    Fp8Group,
    /// NVFP4 W4A4: FP4 groups of 16 under a calibrated global scale.
    Nvfp4 {
        /// compressed-tensors' `input_global_scale`
        gs: f32,
    },
}

/// How fast a layout's producers run, for `qforge plan`'s time estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantRate {
    /// One pass of scales and codes per element (FP8, FP4, MLX).
    Light,
    /// INT4/INT8 group search and packing, CPU bound.
    Integer,
}

/// Why a module cannot be quantized by a layout: the reason, and whether it names the module
/// (else the whole run).
pub type ModuleCheck = std::result::Result<(), String>;

/// The state of one `quantize_to_hf` run that a layout's producers see.
pub struct Cx<'a> {
    /// How the writers read a linear.
    pub src: Source<'a>,
    /// The run's options.
    pub opts: &'a HfQuantOptions,
    /// The dtype of scales (the model dtype; F32 in `fbgemm_fp8`).
    pub scale_dtype: DType,
    /// The effective scheme (MLX's for `--layout mlx`).
    pub scheme: HfScheme,
    /// Roles left unquantized (bad weights under `--bad-weights skip`, layout rules).
    pub skipped: &'a BTreeSet<TensorId>,
}

impl Cx<'_> {
    /// Whether role `m` is quantized in this run (it exists and the policy selects it).
    pub fn quantizes(&self, m: TensorId) -> bool {
        self.src
            .ckpt
            .part(m, qforge_convert::Part::Weight)
            .is_some()
            && super::treatment(m, self.scheme, self.opts, self.src.ckpt, self.skipped)
    }
}

/// One quantized HF layout (a module of [`super`]). Methods take the [`HfScheme`] being used,
/// whose `kind` is `self`.
pub trait LayoutScheme: Sync + std::fmt::Debug {
    /// A stable identity (`fp8-rowwise`, `int`, `mlx`): two schemes are equal when their
    /// identities and parameters are.
    fn id(&self) -> &'static str;

    /// qforge's fixed names for this layout, as `--scheme` takes them (listed in help and
    /// closest-name suggestions).
    fn names(&self) -> &'static [&'static str] {
        &[]
    }

    /// llm-compressor presets meaning this layout: (preset, qforge name, asymmetric).
    fn presets(&self) -> &'static [(&'static str, &'static str, bool)] {
        &[]
    }

    /// Parse a folded name (lower case, `_` as `-`; presets already mapped to qforge names):
    /// `None` when the name is not this layout's.
    fn parse(&self, name: &str, _asym: bool) -> Option<std::result::Result<Params, SchemeError>> {
        self.names().contains(&name).then_some(Ok(Params::NONE))
    }

    /// The scheme's qforge name (its identity unless the parameters spell it).
    fn name(&self, _s: HfScheme) -> String {
        self.id().into()
    }

    /// The name `qforge inspect` shows for a module stored this way.
    fn storage_name(&self, s: HfScheme) -> String {
        self.name(s)
    }

    /// Whether a calibration result of kind `c` is used by this scheme (as `--calib`).
    fn accepts(&self, _s: HfScheme, _c: Calibration) -> bool {
        false
    }

    /// Whether calibration results made for `c` fit this scheme; `None`: results of that kind
    /// do not apply to this layout.
    fn check_calibrated(
        &self,
        _s: HfScheme,
        _c: Calibrated,
    ) -> Option<std::result::Result<(), CalibMismatch>> {
        None
    }

    /// The scheme planned in place of this one when its calibration results are not made yet.
    fn without_calibration(&self, _s: HfScheme) -> Option<HfScheme> {
        None
    }

    /// Check the run's options before any work (layout, calibration inputs).
    fn check_options(&self, _s: HfScheme, opts: &HfQuantOptions) -> ModuleCheck {
        default_check_options(opts)
    }

    /// Check quantized role `id` of `ckpt` before any work (rows that split into its groups,
    /// the calibration results it needs).
    fn check_module(
        &self,
        _s: HfScheme,
        _opts: &HfQuantOptions,
        _ckpt: &Checkpoint,
        _id: TensorId,
    ) -> Result<()> {
        Ok(())
    }

    /// Roles this layout quantizes beyond the policy's linears (MLX: the embedding and an
    /// untied LM head).
    fn also_quantizes(&self, _id: TensorId) -> bool {
        false
    }

    /// Roles this layout leaves unquantized whatever the policy (MLX: rows that do not split
    /// into whole groups).
    fn leaves(&self, _s: HfScheme, _id: TensorId, _cols: usize) -> bool {
        false
    }

    /// The output tensors of quantized role `id` (HF module name `module`).
    fn tensors<'a>(
        &self,
        s: HfScheme,
        cx: &Cx<'a>,
        id: TensorId,
        module: &str,
    ) -> Result<Vec<OutTensor<'a>>>;

    /// Write the scheme's quantization entries into `config` (config.json):
    /// `quantization_config`, and for MLX `quantization`. `not_converted`: the linears left in
    /// the model dtype.
    fn write_config(
        &self,
        s: HfScheme,
        opts: &HfQuantOptions,
        not_converted: &[String],
        config: &mut Value,
    );

    /// Working bytes the producer holds besides the source while it makes a quantized role of
    /// `n` elements (`weight`: the role's source weight, if a single tensor).
    fn work_bytes(&self, _s: HfScheme, _weight: Option<&TensorEntry>, n: u64) -> u64 {
        n
    }

    /// The parameters of integer codes (what GPTQ and AWQ calibrate), if the layout writes them.
    fn integer_codes(&self, _s: HfScheme) -> Option<Params> {
        None
    }

    /// How fast the producers run (for `qforge plan`).
    fn rate(&self) -> QuantRate {
        QuantRate::Light
    }

    /// Recognise role `id` of a checkpoint as stored in this layout: `None` when its tensors are
    /// not this layout's, `Some(Err)` when they are but do not fit (shapes, dtypes).
    fn detect(&self, w: &Weights<'_>, id: TensorId) -> Option<Result<Params>>;

    /// Role `id`'s weight, dequantized to `f32`, row-major `[out, in]` (detected by
    /// [`LayoutScheme::detect`]).
    fn dequant(&self, s: HfScheme, w: &Weights<'_>, id: TensorId) -> Result<Vec<f32>>;

    /// The activation quantization applied in front of a linear stored this way: `w8a8` is the
    /// dynamic-FP8 setting verify resolved (`Some(ub)`: on).
    fn act_emulation(
        &self,
        _s: HfScheme,
        _ckpt: &Checkpoint,
        _id: TensorId,
        w8a8: Option<Option<f32>>,
    ) -> Result<ActEmulation> {
        Ok(match w8a8 {
            Some(ub) => ActEmulation::Fp8Token { ub },
            None => ActEmulation::None,
        })
    }
}

/// What the weights become: a layout ([`LayoutScheme`], one of [`super::LAYOUTS`]) and its
/// parameters. `--scheme` parses to one; [`crate::dequant::WeightRead::weight_storage`] reads
/// one back.
#[derive(Clone, Copy)]
pub struct HfScheme {
    /// The layout.
    pub kind: &'static dyn LayoutScheme,
    /// Its parameters.
    pub params: Params,
}

impl PartialEq for HfScheme {
    fn eq(&self, o: &Self) -> bool {
        self.kind.id() == o.kind.id() && self.params == o.params
    }
}

impl Eq for HfScheme {}

impl std::fmt::Debug for HfScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfScheme({} {:?})", self.kind.id(), self.params)
    }
}

impl HfScheme {
    /// `kind` with parameters `params`.
    pub fn new(kind: &'static dyn LayoutScheme, params: Params) -> Self {
        HfScheme { kind, params }
    }

    /// Parse an HF scheme name (see [`crate::scheme::Scheme::parse`]); a GGUF mix is an error.
    pub fn parse(s: &str, asym: bool) -> std::result::Result<HfScheme, SchemeError> {
        match crate::scheme::Scheme::parse(s, asym)? {
            crate::scheme::Scheme::Hf(h) => Ok(h),
            crate::scheme::Scheme::Gguf(_) => Err(SchemeError(format!(
                "--scheme {s}: a GGUF mix, not an HF layout"
            ))),
        }
    }

    /// The scheme's qforge name.
    pub fn name(self) -> String {
        self.kind.name(self)
    }

    /// The name `qforge inspect` shows for a module stored this way.
    pub fn storage_name(self) -> String {
        self.kind.storage_name(self)
    }

    /// The integer-code parameters (`bits`, `group_size`, `symmetric`) when the scheme writes
    /// integer codes (GPTQ and AWQ take those), else `None`.
    pub fn integer_codes(self) -> Option<Params> {
        self.kind.integer_codes(self)
    }

    /// The activation quantization verify applies in front of a linear stored this way.
    pub fn act_emulation(
        self,
        ckpt: &Checkpoint,
        id: TensorId,
        w8a8: Option<Option<f32>>,
    ) -> Result<ActEmulation> {
        self.kind.act_emulation(self, ckpt, id, w8a8)
    }
}

/// The options check of a compressed-tensors layout that takes no calibrated codes: not
/// `fbgemm_fp8`, no GPTQ codes, no AWQ scales.
pub fn default_check_options(opts: &HfQuantOptions) -> ModuleCheck {
    if opts.layout == super::HfLayout::Fbgemm {
        return Err(
            "the fbgemm_fp8 layout holds FP8 rowwise weights only (--scheme fp8-rowwise)".into(),
        );
    }
    no_calibrated_codes(opts)
}

/// Refuse GPTQ codes and AWQ scales (for layouts other than the integer ones).
pub fn no_calibrated_codes(opts: &HfQuantOptions) -> ModuleCheck {
    if opts.weight_transform.is_some() {
        return Err(
            "folded calibration scales (AWQ) need an int4 scheme quantized round-to-nearest".into(),
        );
    }
    if opts.precomputed_int4.is_some() {
        return Err("calibrated codes need a symmetric int4 or int8 scheme".into());
    }
    Ok(())
}

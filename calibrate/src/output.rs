//! Calibration files.
//!
//! * `fp8-static`: one JSON file, [`CalibFile`] with `input_scales` (HF module → `f32` scale),
//!   which `qforge quantize --scheme fp8-static --calib FILE` reads.
//! * `gptq`: a directory with `calib.json` ([`CalibFile`] with `gptq`) and one safetensors file
//!   per decoder layer, `gptq-<layer:05>.safetensors`, holding for each linear of the layer
//!   (HF names, HF row order) `<module>.weight_scale` (F32 `[rows, groups]`, values exact in the
//!   model dtype) and the codes: `<module>.weight_packed` (I32 `[rows, cols/8]`,
//!   compressed-tensors `pack_to_int32` order) for 4 bits, `<module>.weight_q` (I8
//!   `[rows, cols]`) for 8 bits. [`GptqCodes`] reads them back for `qforge quantize`.
//! * `awq`: a directory with `calib.json` ([`CalibFile`] with `awq`) and one safetensors file
//!   per decoder layer, `awq-<layer:05>.safetensors`, holding `<smooth module>.awq_scales` (F64
//!   `[channels]`) for each mapping applied (`model.layers.N.input_layernorm`,
//!   `...self_attn.v_proj`, `...post_attention_layernorm`, `...mlp.up_proj`). [`AwqScales`]
//!   reads them back; `qforge quantize` folds them into the weights before round-to-nearest.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use qforge_codecs::int4::{self, Int4Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::awq::{LayerScales, SearchResult};
use crate::error::{Error, Result};
use crate::gptq::GptqResult;
use qforge_convert::{LayerTensor, TensorId};

/// `format` of every calibration file.
pub const FORMAT: &str = "qforge-calibration";
/// Name of the GPTQ directory's index.
pub const CALIB_JSON: &str = "calib.json";

/// Per-module outcome, in the report and the calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleReport {
    /// HF module name.
    pub module: String,
    /// Largest |x| the observer kept (fp8-static).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_amax: Option<f32>,
    /// The static input scale when computed in `f64` (`amax / 448` rounded once; fp8-static
    /// with `--precision f64`). Absent: the scale is `amax / 448` in `f32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_scale: Option<f32>,
    /// GPTQ loss `Σ e²/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Dampening that factorised the Hessian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damping: Option<f64>,
    /// Extra damping steps (0 when the Hessian factorised at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damping_retries: Option<u32>,
    /// Columns never activated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_columns: Option<usize>,
    /// Mixture-of-experts expert: the rows (tokens) it was calibrated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_tokens: Option<u64>,
    /// Mixture-of-experts expert that received no token: what was done instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl ModuleReport {
    /// A module's report with no figures yet (each method fills in its own).
    pub fn new(module: String) -> Self {
        ModuleReport {
            module,
            input_amax: None,
            input_scale: None,
            loss: None,
            damping: None,
            damping_retries: None,
            dead_columns: None,
            routed_tokens: None,
            fallback: None,
        }
    }
}

/// The GPTQ scheme recorded in `calib.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptqScheme {
    /// 4 or 8.
    pub bits: u8,
    /// Columns per scale; `None` = per row.
    pub group_size: Option<usize>,
    /// Always true.
    pub symmetric: bool,
    /// `"weight"` or `null`.
    pub actorder: Option<String>,
    /// λ.
    pub dampening: f64,
    /// Lazy-update block.
    pub block_size: usize,
    /// One file per layer, in layer order.
    pub layer_files: Vec<String>,
}

/// The AWQ scheme recorded in `calib.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwqScheme {
    /// 4.
    pub bits: u8,
    /// Columns per scale; `None` = per row.
    pub group_size: Option<usize>,
    /// Symmetric (W4A16) or asymmetric (W4A16_ASYM) quantization in the search.
    pub symmetric: bool,
    /// llm-compressor `duo_scaling`.
    pub duo_scaling: bool,
    /// Grid points.
    pub n_grid: usize,
    /// One file per layer, in layer order.
    pub layer_files: Vec<String>,
    /// Search outcome per mapping, in model order.
    pub mappings: Vec<AwqMapping>,
}

/// One AWQ mapping's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwqMapping {
    /// HF name of the smooth module (a norm, or a linear whose output rows are divided).
    pub smooth: String,
    /// HF names of the balance linears.
    pub balance: Vec<String>,
    /// α, duo scaling, RTN and best losses.
    #[serde(flatten)]
    pub result: SearchResult,
}

/// A calibration file (`-o FILE` for fp8-static, `DIR/calib.json` for gptq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibFile {
    /// [`FORMAT`].
    pub format: String,
    /// 1.
    pub version: u32,
    /// `fp8-static` or `gptq`.
    pub method: String,
    /// `minmax`, `percentile:<p>` (fp8-static).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<String>,
    /// The calibration forward's float type when not `f32` (`f64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Calibration samples.
    pub samples: usize,
    /// Tokens per sample.
    pub seq_len: usize,
    /// SHA-256 of the samples' token ids (LE u32).
    pub samples_sha256: String,
    /// Static input scales per HF module (fp8-static).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_scales: Option<BTreeMap<String, f32>>,
    /// GPTQ scheme and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gptq: Option<GptqScheme>,
    /// AWQ scheme, files and per-mapping search results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awq: Option<AwqScheme>,
    /// Per-module outcomes, in model order.
    pub modules: Vec<ModuleReport>,
}

impl CalibFile {
    /// Serialized as pretty JSON with a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("plain data serializes");
        v.push(b'\n');
        v
    }
}

/// Write `bytes` to `path` atomically (temporary sibling, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("no file name")))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// File name of layer `i`'s GPTQ results.
pub fn layer_file_name(i: u32) -> String {
    format!("gptq-{i:05}.safetensors")
}

/// Serialize one layer's GPTQ results (see the module docs).
pub fn layer_file_bytes(results: &[(String, GptqResult)], bits: u8) -> Result<Vec<u8>> {
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (m, r) in results {
        let ng = r.cols / r.group_size;
        bufs.push((
            format!("{m}.weight_scale"),
            Dtype::F32,
            vec![r.rows, ng],
            r.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        ));
        // compressed-tensors packing: 8 codes a word for 4 bits, 4 for 8 bits
        let p = int4::pack_ct_bits(&r.q, r.rows, r.cols, bits)?;
        bufs.push((
            format!("{m}.weight_packed"),
            Dtype::I32,
            vec![r.rows, p.len() / r.rows.max(1)],
            p.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Unsupported(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "qforge-gptq".to_string());
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Unsupported(format!("serializing GPTQ results: {e}")))
}

/// GPTQ results of a calibration directory, read one layer file at a time.
#[derive(Debug, Clone)]
pub struct GptqCodes {
    dir: PathBuf,
    /// The directory's `calib.json`.
    pub calib: CalibFile,
    scheme: GptqScheme,
}

/// Read `path`: a calibration JSON file, or a directory holding [`CALIB_JSON`].
pub fn read_calib(path: &Path) -> Result<CalibFile> {
    let file = if path.is_dir() {
        path.join(CALIB_JSON)
    } else {
        path.to_owned()
    };
    let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    let c: CalibFile = serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
        path: file.clone(),
        reason: format!("not a qforge calibration file: {e}"),
    })?;
    if c.format != FORMAT || c.version != 1 {
        return Err(Error::BadFile {
            path: file,
            reason: format!(
                "format {:?} version {} is not {FORMAT} 1",
                c.format, c.version
            ),
        });
    }
    Ok(c)
}

fn layer_of(module: &str) -> Option<u32> {
    module
        .strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

impl GptqCodes {
    /// Open a GPTQ calibration directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let calib = read_calib(dir)?;
        let scheme = calib.gptq.clone().ok_or_else(|| Error::BadFile {
            path: dir.join(CALIB_JSON),
            reason: format!("method {} has no GPTQ results", calib.method),
        })?;
        if !dir.is_dir() {
            return Err(Error::BadFile {
                path: dir.into(),
                reason: "GPTQ results are a directory".into(),
            });
        }
        Ok(GptqCodes {
            dir: dir.into(),
            calib,
            scheme,
        })
    }

    /// Bits per code.
    pub fn bits(&self) -> u8 {
        self.scheme.bits
    }

    /// Group size (`None` = per row).
    pub fn group_size(&self) -> Option<usize> {
        self.scheme.group_size
    }

    /// Whether `module` has GPTQ results.
    pub fn has(&self, module: &str) -> bool {
        self.calib.modules.iter().any(|m| m.module == module)
    }

    /// The codes (4 or 8 bits, [`GptqCodes::bits`]) and scales of `module`.
    pub fn int4(&self, module: &str) -> Result<Option<Int4Tensor>> {
        if !self.has(module) {
            return Ok(None);
        }
        let bad = |path: &Path, reason: String| Error::BadFile {
            path: path.into(),
            reason,
        };
        let bits = self.scheme.bits;
        if !matches!(bits, 4 | 8) {
            return Err(bad(&self.dir, format!("{bits}-bit codes")));
        }
        let layer = layer_of(module)
            .ok_or_else(|| bad(&self.dir, format!("{module} is not a decoder-layer linear")))?;
        let name = self
            .scheme
            .layer_files
            .get(layer as usize)
            .ok_or_else(|| bad(&self.dir, format!("no layer file for layer {layer}")))?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(bad(&self.dir, format!("layer file name {name:?}")));
        }
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, e.to_string()))?;
        let get = |suffix: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let n = format!("{module}.{suffix}");
            let t = st
                .tensor(&n)
                .map_err(|_| bad(&path, format!("missing tensor {n}")))?;
            if t.dtype() != dtype || t.shape().len() != 2 {
                return Err(bad(&path, format!("{n}: {:?} {:?}", t.dtype(), t.shape())));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let (ss, sb) = get("weight_scale", Dtype::F32)?;
        let (ps, pb) = get("weight_packed", Dtype::I32)?;
        let (rows, ng) = (ss[0], ss[1]);
        let words = ps[1];
        if ps[0] != rows || ng == 0 {
            return Err(bad(&path, format!("{module}: shapes {ss:?} / {ps:?}")));
        }
        // whole words of codes (4 or 8 bits); a width that is not is caught by the writer,
        // which compares rows × columns × group with the model's
        let cols = words * (32 / usize::from(bits));
        if cols % ng != 0 {
            return Err(bad(&path, format!("{module}: {cols} columns, {ng} groups")));
        }
        let packed: Vec<i32> = pb
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let scales: Vec<f32> = sb
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(bad(&path, format!("{module}: non-positive scale")));
        }
        let q = int4::unpack_ct_bits(&packed, rows, cols, bits)?;
        Ok(Some(Int4Tensor {
            bits,
            rows,
            cols,
            group_size: cols / ng,
            q,
            scales,
            zero_points: None,
        }))
    }
}

/// File name of layer `i`'s AWQ scales.
pub fn awq_layer_file_name(i: u32) -> String {
    format!("awq-{i:05}.safetensors")
}

fn awq_smooth_kinds() -> [(LayerTensor, &'static str); 4] {
    [
        (LayerTensor::AttnNorm, "attn"),
        (LayerTensor::V, "vo"),
        (LayerTensor::FfnNorm, "mlp"),
        (LayerTensor::Up, "up_down"),
    ]
}

fn awq_slot<'a>(s: &'a mut LayerScales, which: &str) -> &'a mut Option<Vec<f64>> {
    match which {
        "attn" => &mut s.attn,
        "vo" => &mut s.vo,
        "mlp" => &mut s.mlp,
        _ => &mut s.up_down,
    }
}

/// Serialize layer `i`'s AWQ scales (see the module docs).
pub fn awq_layer_file_bytes(i: u32, scales: &LayerScales) -> Result<Vec<u8>> {
    let mut s = scales.clone();
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |kind, v: &Vec<f64>| {
        let m = qforge_quantize::layout::hf_module(TensorId::Layer { index: i, kind });
        bufs.push((
            format!("{m}.awq_scales"),
            vec![v.len()],
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    };
    for (kind, which) in awq_smooth_kinds() {
        if let Some(v) = awq_slot(&mut s, which) {
            push(kind, v);
        }
    }
    for (&expert, v) in &s.experts_up_down {
        let proj = qforge_convert::FfnProj::Up;
        push(LayerTensor::Expert { expert, proj }, v);
    }
    if let Some(v) = &s.shared_up_down {
        let proj = qforge_convert::FfnProj::Up;
        push(LayerTensor::SharedExpert { proj }, v);
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, sh, b)| {
            TensorView::new(Dtype::F64, sh.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Unsupported(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "qforge-awq".to_string());
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Unsupported(format!("serializing AWQ scales: {e}")))
}

/// AWQ scales of a calibration directory, all layers (one `f64` per channel per mapping).
#[derive(Debug, Clone)]
pub struct AwqScales {
    /// The directory's `calib.json`.
    pub calib: CalibFile,
    /// The scheme.
    pub scheme: AwqScheme,
    /// Per decoder layer.
    pub layers: Vec<LayerScales>,
}

impl AwqScales {
    /// Open an AWQ calibration directory and read every layer file.
    pub fn open(dir: &Path) -> Result<Self> {
        let calib = read_calib(dir)?;
        let bad = |path: &Path, reason: String| Error::BadFile {
            path: path.into(),
            reason,
        };
        let scheme = calib.awq.clone().ok_or_else(|| {
            bad(
                &dir.join(CALIB_JSON),
                format!("method {} has no AWQ results", calib.method),
            )
        })?;
        let mut layers = Vec::with_capacity(scheme.layer_files.len());
        // every mapping calib.json lists must have its scales, and nothing else may be read
        let mut listed: std::collections::BTreeSet<String> = scheme
            .mappings
            .iter()
            .map(|m| format!("{}.awq_scales", m.smooth))
            .collect();
        for (i, name) in scheme.layer_files.iter().enumerate() {
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(bad(dir, format!("layer file name {name:?}")));
            }
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, e.to_string()))?;
            let mut ls = LayerScales::default();
            let index = u32::try_from(i).map_err(|_| bad(dir, "too many layers".into()))?;
            let mut read = |n: &str| -> Result<Option<Vec<f64>>> {
                let Ok(t) = st.tensor(n) else {
                    return Ok(None);
                };
                if !listed.remove(n) {
                    return Err(bad(&path, format!("{n} is not a mapping of {CALIB_JSON}")));
                }
                if t.dtype() != Dtype::F64 || t.shape().len() != 1 {
                    return Err(bad(&path, format!("{n}: {:?} {:?}", t.dtype(), t.shape())));
                }
                let v: Vec<f64> = t
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect();
                if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                    return Err(bad(&path, format!("{n}: non-positive or non-finite scale")));
                }
                Ok(Some(v))
            };
            for (kind, which) in awq_smooth_kinds() {
                let n = format!(
                    "{}.awq_scales",
                    qforge_quantize::layout::hf_module(TensorId::Layer { index, kind })
                );
                if let Some(v) = read(&n)? {
                    *awq_slot(&mut ls, which) = Some(v);
                }
            }
            // the experts' up -> down mappings: names this layer's expert or shared up_proj
            for n in st.names() {
                let Some(module) = n.strip_suffix(".awq_scales") else {
                    continue;
                };
                let up = match qforge_convert::NameScheme::Hf.parse(&format!("{module}.weight")) {
                    qforge_convert::NameMatch::Tensor(qforge_convert::TensorKey {
                        id:
                            TensorId::Layer {
                                index: li,
                                kind:
                                    kind @ (LayerTensor::Expert {
                                        proj: qforge_convert::FfnProj::Up,
                                        ..
                                    }
                                    | LayerTensor::SharedExpert {
                                        proj: qforge_convert::FfnProj::Up,
                                    }),
                            },
                        ..
                    }) if li == index => kind,
                    _ => continue,
                };
                if let Some(v) = read(n)? {
                    ls.set_up_down(up, v);
                }
            }
            layers.push(ls);
        }
        if let Some(n) = listed.first() {
            return Err(bad(dir, format!("no layer file holds {n}")));
        }
        Ok(AwqScales {
            calib,
            scheme,
            layers,
        })
    }
}

impl qforge_quantize::layout::WeightTransform for AwqScales {
    fn touches(&self, id: TensorId) -> bool {
        match id {
            TensorId::Layer { index, kind } => self
                .layers
                .get(index as usize)
                .is_some_and(|l| l.touches(kind)),
            _ => false,
        }
    }

    fn apply(&self, id: TensorId, w: &mut [f32], cols: usize) -> std::result::Result<(), String> {
        match id {
            TensorId::Layer { index, kind } => match self.layers.get(index as usize) {
                Some(l) => l.apply(kind, w, cols).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

//! The sequential layer-by-layer engine (see the crate docs).
//!
//! Per layer `i`:
//! 1. load layer `i`'s weights ([`Model::layer`]);
//! 2. run the layer over every sample with the *original* weights, feeding each linear's input
//!    to the method: the q/k/v input (after `input_layernorm`), the `o_proj` input (attention
//!    output), the gate/up input (after `post_attention_layernorm`) and the `down_proj` input
//!    (SwiGLU output);
//! 3. fp8-static: the outputs of that pass are layer `i+1`'s inputs (llm-compressor calibrates
//!    with quantization disabled). GPTQ: quantize the seven linears, then run the layer again
//!    with the dequantized weights; those outputs are layer `i+1`'s inputs;
//! 4. checkpoint into the state directory: `hidden.f32` (the hidden states; `hidden.f64` with
//!    [`Precision::F64`]), the layer's GPTQ file, then `state.json` (the commit point), each
//!    written atomically.
//!
//! A mixture-of-experts block ([`crate::moe`]) calibrates each expert's gate/up and down on
//! the rows routed to it (or every token, [`ExpertTokens::All`]; Llama 4's shared expert on
//! every token, in the slot after the experts): per-expert observers for
//! fp8-static, per-expert Hessians for GPTQ (all of a block's experts' Hessians are held at
//! once: `n_expert · (hidden² + expert_ffn²) · 4` bytes); the router is not calibrated.
//!
//! fp8-static can run the forward in `f64` ([`Precision::F64`]): the activations are then the
//! model's to within `f64` rounding, free of the `f32` accumulation-order noise that makes two
//! `f32` implementations' maxima differ by ~1e-6 relative after 30 layers.
//!
//! A run that finds a state directory with the same fingerprint (options, samples, model)
//! resumes after the last committed layer; since the hidden states are stored bit-exactly the
//! output is byte-identical to an uninterrupted run. The state directory is removed once the
//! output is written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use qforge_convert::write::{OutputDir, OutputOptions};
use qforge_convert::{FfnProj, Format, LayerTensor, TensorId};
use qforge_quantize::layout::hf_module;
use qforge_verify::eval::run_layer_observed;
use qforge_verify::matmul::matmul_t;
use qforge_verify::ops::RopeTable;
use qforge_verify::{LayerWeights, Model, Project, Real};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::awq::AwqConfig;
use crate::data::Samples;
use crate::error::{Error, Result};
use crate::gptq::{gptq, GptqConfig, GptqResult};
use crate::moe::{expert_inputs, expert_kinds, ExpertObservers, ExpertTokens};
use crate::observer::{Observer, ObserverKind};
use crate::output::{
    awq_layer_file_bytes, awq_layer_file_name, layer_file_bytes, layer_file_name, write_atomic,
    AwqMapping, AwqScheme, CalibFile, GptqScheme, ModuleReport, CALIB_JSON, FORMAT,
};

/// What to calibrate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Static per-tensor FP8 input scales.
    Fp8Static(ObserverKind),
    /// GPTQ weight quantization.
    Gptq(GptqConfig),
    /// AWQ smoothing-scale search (the weights are then quantized round-to-nearest by
    /// `qforge quantize --calib`).
    Awq(AwqConfig),
}

/// The float type the calibration forward runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// `f32` (as `qforge verify`), the default.
    #[default]
    F32,
    /// `f64` weights, activations and matmuls (fp8-static only): about twice the time; the
    /// hidden states take twice the memory, and the layer being run is held in `f64` beside its
    /// `f32` copy (three times one layer's `f32` weights).
    F64,
}

/// Options of [`calibrate`].
#[derive(Debug, Clone)]
pub struct CalibOptions {
    /// The method.
    pub method: Method,
    /// Where checkpoints go (default: `<output>.qforge-state` beside the output).
    pub state_dir: Option<PathBuf>,
    /// Replace an existing output.
    pub overwrite: bool,
    /// One stderr line per layer.
    pub progress: bool,
    /// Stop with [`Error::Stopped`] after checkpointing this layer (tests of resume).
    pub stop_after_layer: Option<u32>,
    /// The forward's float type.
    pub precision: Precision,
    /// Mixture-of-experts blocks: the rows each expert is calibrated on (see [`crate::moe`]).
    pub expert_tokens: ExpertTokens,
}

/// What [`calibrate`] did.
#[derive(Debug, Clone, Serialize)]
pub struct CalibSummary {
    /// Decoder layers.
    pub layers: u32,
    /// The first layer this run computed (0 unless resumed).
    pub started_at_layer: u32,
    /// Per-module outcomes.
    pub modules: Vec<ModuleReport>,
    /// Wall time of this run.
    pub seconds: f64,
}

/// Which linears read each captured input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// q_proj, k_proj, v_proj.
    Qkv,
    /// o_proj.
    O,
    /// gate_proj, up_proj.
    GateUp,
    /// down_proj.
    Down,
}

const SITES: [Site; 4] = [Site::Qkv, Site::O, Site::GateUp, Site::Down];

impl Site {
    fn index(self) -> usize {
        self as usize
    }

    /// The linears reading this input.
    pub fn kinds(self) -> &'static [LayerTensor] {
        match self {
            Site::Qkv => &[LayerTensor::Q, LayerTensor::K, LayerTensor::V],
            Site::O => &[LayerTensor::O],
            Site::GateUp => &[LayerTensor::Gate, LayerTensor::Up],
            Site::Down => &[LayerTensor::Down],
        }
    }
}

/// One sample through one layer, in place on `hc` (`[seq, hidden]`), showing each linear's
/// input to `sink`: `qforge verify`'s layer forward, observed.
pub fn layer_forward<T: Real, L: Project<T>>(
    model: &Model,
    lw: &LayerWeights<T, L>,
    rope: &RopeTable,
    hc: &mut [T],
    seq: usize,
    sink: &mut dyn FnMut(Site, &[T]),
) {
    layer_forward_moe(model, lw, rope, hc, seq, sink, &mut |_, _| {});
}

/// [`layer_forward`] that also shows the mixture-of-experts block's observations (the router's
/// input, each expert's routed rows, the shared expert's inputs; [`qforge_verify::moe::ffn`])
/// to `moe_sink` instead of `sink`.
pub fn layer_forward_moe<T: Real, L: Project<T>>(
    model: &Model,
    lw: &LayerWeights<T, L>,
    rope: &RopeTable,
    hc: &mut [T],
    seq: usize,
    sink: &mut dyn FnMut(Site, &[T]),
    moe_sink: &mut dyn FnMut(&[LayerTensor], &[T]),
) {
    run_layer_observed(model, lw, rope, hc, seq, &mut |kinds, x| {
        if qforge_verify::moe_observe::is_moe(kinds)
            || matches!(kinds.first(), Some(LayerTensor::SharedExpert { .. }))
        {
            moe_sink(kinds, x);
            return;
        }
        let site = match kinds.first() {
            Some(LayerTensor::O) => Site::O,
            Some(LayerTensor::Gate | LayerTensor::Up) => Site::GateUp,
            Some(LayerTensor::Down) => Site::Down,
            _ => Site::Qkv,
        };
        sink(site, x);
    });
}

/// `H = Σ 2·x·xᵀ` over samples, then `/N` (llm-compressor 0.14 `accumulate_hessian` with
/// `N` = number of sequences), `f32`.
struct Hessian {
    h: Vec<f32>,
    xt: Vec<f32>,
    w: usize,
    n: usize,
}

impl Hessian {
    fn new(w: usize) -> Self {
        Hessian {
            h: vec![0f32; w * w],
            xt: Vec::new(),
            w,
            n: 0,
        }
    }

    /// Add the `[t, w]` inputs `x`; `tmp` is scratch shared by the layer's Hessians (one
    /// `w × w` product buffer for all of them instead of one each).
    fn add(&mut self, x: &[f32], tmp: &mut Vec<f32>) {
        let w = self.w;
        let t = x.len() / w;
        self.xt.resize(w * t, 0.0);
        for (r, row) in x.chunks_exact(w).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                self.xt[c * t + r] = v;
            }
        }
        tmp.resize(w * w, 0.0);
        matmul_t(&self.xt, w, t, &self.xt, w, tmp);
        self.h
            .par_chunks_mut(4096)
            .zip(tmp.par_chunks(4096))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += 2.0 * b));
        self.n += 1;
    }

    fn finish(mut self) -> Vec<f32> {
        let n = self.n.max(1) as f32;
        self.h.par_iter_mut().for_each(|v| *v /= n);
        self.h
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    fingerprint: String,
    next_layer: u32,
    modules: Vec<ModuleReport>,
    layer_files: Vec<String>,
    #[serde(default)]
    awq_mappings: Vec<AwqMapping>,
}

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Fp8Static(_) => "fp8-static",
        Method::Gptq(_) => "gptq",
        Method::Awq(_) => "awq",
    }
}

fn observer_name(k: ObserverKind) -> String {
    match k {
        ObserverKind::MinMax => "minmax".into(),
        ObserverKind::Percentile(p) => format!("percentile:{p}"),
    }
}

fn samples_sha(samples: &Samples) -> String {
    let mut h = Sha256::new();
    for t in samples.flat() {
        h.update(t.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn fingerprint(model: &Model, samples: &Samples, method: &Method, precision: Precision) -> String {
    let mut h = Sha256::new();
    h.update(format!("{method:?}\n{:?}\n", model.config()).as_bytes());
    if precision != Precision::F32 {
        h.update(format!("{precision:?}\n").as_bytes());
    }
    let names: Vec<String> = model
        .ckpt
        .tensors
        .iter()
        .map(|t| format!("{:?}:{:?}", t.key, t.dtype))
        .collect();
    h.update(names.join(",").as_bytes());
    h.update(samples_sha(samples).as_bytes());
    hex::encode(h.finalize())
}

fn progress(on: bool, msg: std::fmt::Arguments<'_>) {
    if on {
        let _ = writeln!(std::io::stderr(), "{msg}");
    }
}

/// The default state directory of an output path: `<output>.qforge-state` beside it.
pub fn default_state_dir(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".qforge-state");
    PathBuf::from(s)
}

/// The hidden states between layers, in the forward's type.
enum Hidden {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Hidden {
    fn file_name(precision: Precision) -> &'static str {
        match precision {
            Precision::F32 => "hidden.f32",
            Precision::F64 => "hidden.f64",
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Hidden::F32(h) => h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Hidden::F64(h) => h.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn from_bytes(b: &[u8], precision: Precision) -> Self {
        match precision {
            Precision::F32 => Hidden::F32(
                b.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Precision::F64 => Hidden::F64(
                b.chunks_exact(8)
                    .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            ),
        }
    }

    /// The `f32` states GPTQ and AWQ work on (they run in `f32` only; checked up front).
    fn f32_mut(&mut self) -> Result<&mut Vec<f32>> {
        match self {
            Hidden::F32(h) => Ok(h),
            Hidden::F64(_) => Err(Error::Unsupported(
                "--precision f64 applies to fp8-static calibration".into(),
            )),
        }
    }
}

fn read_state(
    dir: &Path,
    fp: &str,
    hidden_len: usize,
    precision: Precision,
) -> Result<Option<(State, Hidden)>> {
    let sp = dir.join("state.json");
    let Ok(bytes) = std::fs::read(&sp) else {
        return Ok(None);
    };
    let st: State = serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
        path: sp.clone(),
        reason: format!("unreadable calibration state: {e}"),
    })?;
    if st.fingerprint != fp {
        return Err(Error::BadFile {
            path: sp,
            reason: "this state belongs to a run with other options, samples or model \
                     (delete the state directory to start over)"
                .into(),
        });
    }
    let hp = dir.join(Hidden::file_name(precision));
    let hb = std::fs::read(&hp).map_err(|e| Error::io(&hp, e))?;
    let width = match precision {
        Precision::F32 => 4,
        Precision::F64 => 8,
    };
    if hb.len() != hidden_len * width {
        return Err(Error::BadFile {
            path: hp,
            reason: format!("{} bytes, expected {}", hb.len(), hidden_len * width),
        });
    }
    Ok(Some((st, Hidden::from_bytes(&hb, precision))))
}

/// Calibrate `model` on `samples`; write the result to `dest` (a JSON file for fp8-static, a
/// directory for GPTQ; see [`crate::output`]).
pub fn calibrate(
    model: &Model,
    samples: &Samples,
    opts: &CalibOptions,
    dest: &Path,
) -> Result<CalibSummary> {
    let start = Instant::now();
    let cfg = model.config().clone();
    check_options(model, &cfg, opts, dest)?;
    let hid = cfg.hidden_size as usize;
    let seq = samples.seq_len;
    let n = samples.n();
    let nl = cfg.num_layers as u32;
    let fp = fingerprint(model, samples, &opts.method, opts.precision);
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(dest));
    std::fs::create_dir_all(&state_dir).map_err(|e| Error::io(&state_dir, e))?;
    let (mut st, mut h) = open_state(model, samples, opts, &state_dir, &fp, n * seq * hid, nl)?;
    let started_at_layer = st.next_layer;
    let mut bar =
        qforge_verify::progress::Progress::new(opts.progress, (nl - started_at_layer) as usize);
    let rope = model.rope_table(seq);
    for i in st.next_layer..nl {
        let t0 = Instant::now();
        let mut lw = model.layer(i)?;
        let reports = match &opts.method {
            Method::Fp8Static(kind) => {
                fp8_static_layer(model, &lw, &rope, &mut h, seq, i, *kind, opts)?
            }
            Method::Gptq(g) => {
                let step = LayerStep {
                    model,
                    rope: &rope,
                    seq,
                    index: i,
                    state_dir: &state_dir,
                };
                gptq_layer(&step, &mut lw, h.f32_mut()?, g, opts.expert_tokens, &mut st)?
            }
            Method::Awq(a) => {
                let step = LayerStep {
                    model,
                    rope: &rope,
                    seq,
                    index: i,
                    state_dir: &state_dir,
                };
                awq_layer_step(&step, &mut lw, h.f32_mut()?, a, opts.expert_tokens, &mut st)?
            }
        };
        drop(lw);
        let hb = h.to_bytes();
        write_atomic(&state_dir.join(Hidden::file_name(opts.precision)), &hb)?;
        drop(hb);
        st.modules.extend(reports);
        st.next_layer = i + 1;
        let sj = serde_json::to_vec_pretty(&st).expect("plain data serializes");
        write_atomic(&state_dir.join("state.json"), &sj)?;
        bar.step(format_args!(
            "layer {}/{nl}: {} done in {:.1} s",
            i + 1,
            method_name(&opts.method),
            t0.elapsed().as_secs_f64()
        ));
        if opts.stop_after_layer == Some(i) && i + 1 < nl {
            return Err(Error::Stopped { layer: i });
        }
    }
    drop(h);
    write_output(samples, opts, dest, &state_dir, &st)?;
    std::fs::remove_dir_all(&state_dir).map_err(|e| Error::io(&state_dir, e))?;
    Ok(CalibSummary {
        layers: nl,
        started_at_layer,
        modules: st.modules,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Refuse options the model or method cannot take, before any work.
fn check_options(
    model: &Model,
    cfg: &qforge_convert::ModelConfig,
    opts: &CalibOptions,
    dest: &Path,
) -> Result<()> {
    if let (Some(m), Method::Awq(a)) = (&cfg.moe, &opts.method) {
        qforge_codecs::int4::check_group(m.expert_ffn as usize, a.group_size)?;
    }
    if let (Some(m), Method::Gptq(g)) = (&cfg.moe, &opts.method) {
        qforge_codecs::int4::check_group(m.expert_ffn as usize, g.group_size)?;
    }
    if let Method::Gptq(g) = &opts.method {
        if model.ckpt.format != Format::Hf {
            return Err(Error::Unsupported(
                "GPTQ calibration reads Hugging Face checkpoints (Q/K rows in HF order); \
                 convert first: qforge convert <model> <dir> --to hf --dtype bf16"
                    .into(),
            ));
        }
        for kind in [LayerTensor::Q, LayerTensor::O, LayerTensor::Down] {
            let s = cfg.expected_shape(TensorId::Layer { index: 0, kind });
            qforge_codecs::int4::check_group(s[1] as usize, g.group_size)?;
        }
    }
    if opts.precision != Precision::F32 && !matches!(opts.method, Method::Fp8Static(_)) {
        return Err(Error::Unsupported(
            "--precision f64 applies to fp8-static calibration (GPTQ and AWQ run in f32)".into(),
        ));
    }
    if let Method::Awq(a) = &opts.method {
        for kind in [LayerTensor::Q, LayerTensor::O, LayerTensor::Down] {
            let s = cfg.expected_shape(TensorId::Layer { index: 0, kind });
            qforge_codecs::int4::check_group(s[1] as usize, a.group_size)?;
        }
    }
    if dest.exists() && !opts.overwrite {
        return Err(Error::io(
            dest,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "output exists (use --overwrite)",
            ),
        ));
    }
    Ok(())
}

/// The saved state when `state_dir` holds one for this fingerprint (a resumed run), else a
/// fresh state with the embedded samples as layer 0's input.
fn open_state(
    model: &Model,
    samples: &Samples,
    opts: &CalibOptions,
    state_dir: &Path,
    fp: &str,
    hidden_len: usize,
    nl: u32,
) -> Result<(State, Hidden)> {
    Ok(
        match read_state(state_dir, fp, hidden_len, opts.precision)? {
            Some((st, h)) => {
                progress(
                    opts.progress,
                    format_args!(
                        "resuming at layer {}/{nl} from {}",
                        st.next_layer + 1,
                        state_dir.display()
                    ),
                );
                (st, h)
            }
            None => (
                State {
                    fingerprint: fp.to_owned(),
                    next_layer: 0,
                    modules: Vec::new(),
                    layer_files: Vec::new(),
                    awq_mappings: Vec::new(),
                },
                {
                    let e = model.embed(&samples.flat())?;
                    match opts.precision {
                        Precision::F32 => Hidden::F32(e),
                        Precision::F64 => Hidden::F64(e.iter().map(|&v| f64::from(v)).collect()),
                    }
                },
            ),
        },
    )
}

/// What a per-layer step needs besides the weights and hidden states.
struct LayerStep<'a> {
    model: &'a Model,
    rope: &'a RopeTable,
    seq: usize,
    index: u32,
    state_dir: &'a Path,
}

/// fp8-static on layer `i`: observe every linear's input (per expert in a MoE block) and
/// advance `h` through the layer with the original weights.
#[allow(clippy::too_many_arguments)]
fn fp8_static_layer(
    model: &Model,
    lw: &LayerWeights,
    rope: &RopeTable,
    h: &mut Hidden,
    seq: usize,
    i: u32,
    kind: ObserverKind,
    opts: &CalibOptions,
) -> Result<Vec<ModuleReport>> {
    let mut reports = Vec::new();
    let (obs, eobs) = match h {
        Hidden::F32(h) => observe_layer(model, lw, rope, h, seq, kind, opts.expert_tokens),
        Hidden::F64(h) => {
            let lw64 = lw.to_f64().ok_or_else(|| {
                Error::Unsupported(
                    "--precision f64 needs a model without activation quantization".into(),
                )
            })?;
            observe_layer(model, &lw64, rope, h, seq, kind, opts.expert_tokens)
        }
    };
    for site in SITES {
        for &kind in site.kinds() {
            if lw.moe.is_some() && matches!(site, Site::GateUp | Site::Down) {
                continue;
            }
            let o = &obs[site.index()];
            reports.push(ModuleReport {
                #[allow(clippy::cast_possible_truncation)] // reported as f32
                input_amax: Some(o.amax() as f32),
                input_scale: (opts.precision == Precision::F64).then(|| o.scale_f64()),
                ..ModuleReport::new(hf_module(TensorId::Layer { index: i, kind }))
            });
        }
    }
    if let Some(e) = eobs {
        reports.extend(e.reports(i, opts.precision == Precision::F64));
    }
    Ok(reports)
}

/// GPTQ on layer `step.index`: collect the Hessians (per expert in a MoE block), quantize the
/// linears, advance `h` through the layer with the dequantized weights and save the layer's
/// file in the state directory.
fn gptq_layer(
    step: &LayerStep<'_>,
    lw: &mut LayerWeights,
    h: &mut [f32],
    g: &GptqConfig,
    expert_tokens: ExpertTokens,
    st: &mut State,
) -> Result<Vec<ModuleReport>> {
    let LayerStep {
        model,
        rope,
        seq,
        index: i,
        state_dir,
    } = *step;
    let hid = lw.q.inp;
    let mut reports = Vec::new();
    let widths = [hid, lw.o.inp, hid, lw.down.inp];
    let mut hs: Vec<Hessian> = widths.iter().map(|&w| Hessian::new(w)).collect();
    let mut scratch = vec![0f32; seq * hid];
    let mut tmp = Vec::new();
    // per expert: [gate/up, down] Hessians and routed rows
    // (the shared expert, when the block has one, is the last slot)
    let mut ehs: Vec<([Hessian; 2], u64)> = lw.moe.as_ref().map_or(Vec::new(), |m| {
        let shared = m.shared.as_ref().map(|s| s[2].inp);
        (0..m.experts.len())
            .map(|_| m.ffn)
            .chain(shared)
            .map(|f| ([Hessian::new(hid), Hessian::new(f)], 0))
            .collect()
    });
    for hc in h.chunks(seq * hid) {
        scratch.copy_from_slice(hc);
        let mut etmp = Vec::new();
        layer_forward_moe(
            model,
            lw,
            rope,
            &mut scratch,
            seq,
            &mut |site, x| hs[site.index()].add(x, &mut tmp),
            &mut |kinds, x| {
                if let Some(m) = &lw.moe {
                    expert_inputs(m, expert_tokens, kinds, x, &mut |e, down, x| {
                        if let Some((eh, rows)) = ehs.get_mut(e) {
                            eh[usize::from(down)].add(x, &mut etmp);
                            if !down {
                                *rows += (x.len() / hid) as u64;
                            }
                        }
                    });
                }
            },
        );
    }
    drop(tmp);
    let mut results: Vec<(String, GptqResult)> = Vec::new();
    for (site, hess) in SITES.into_iter().zip(hs) {
        if lw.moe.is_some() && matches!(site, Site::GateUp | Site::Down) {
            continue;
        }
        let hm = hess.finish();
        for &kind in site.kinds() {
            let module = hf_module(TensorId::Layer { index: i, kind });
            let lin = match kind {
                LayerTensor::Q => &mut lw.q,
                LayerTensor::K => &mut lw.k,
                LayerTensor::V => &mut lw.v,
                LayerTensor::O => &mut lw.o,
                LayerTensor::Gate => &mut lw.gate,
                LayerTensor::Up => &mut lw.up,
                _ => &mut lw.down,
            };
            let r = gptq(&module, &lin.w, lin.out, lin.inp, &hm, g)?;
            if r.retries > 0 {
                progress(
                    true,
                    format_args!(
                        "warning: {module}: Hessian needed extra dampening {} ({} retries)",
                        r.damping, r.retries
                    ),
                );
            }
            lin.w = r.dequantize();
            reports.push(gptq_report(module.clone(), &r));
            results.push((module, r));
        }
    }
    if let Some(m) = lw.moe.as_mut() {
        gptq_experts(m, ehs, i, g, &mut reports, &mut results)?;
    }
    for hc in h.chunks_mut(seq * hid) {
        layer_forward(model, lw, rope, hc, seq, &mut |_, _| {});
    }
    let name = layer_file_name(i);
    write_atomic(&state_dir.join(&name), &layer_file_bytes(&results, g.bits)?)?;
    st.layer_files.push(name);
    Ok(reports)
}

/// AWQ on layer `step.index`: search the scales, apply them, save the layer's file.
fn awq_layer_step(
    step: &LayerStep<'_>,
    lw: &mut LayerWeights,
    h: &mut [f32],
    a: &AwqConfig,
    tokens: ExpertTokens,
    st: &mut State,
) -> Result<Vec<ModuleReport>> {
    let LayerStep {
        model,
        rope,
        seq,
        index: i,
        state_dir,
    } = *step;
    let mut reports = Vec::new();
    let (scales, mappings, rows) =
        crate::awq_layer::awq_layer(model, lw, rope, h, seq, i, a, tokens)?;
    let mut kinds: Vec<LayerTensor> = SITES.iter().flat_map(|s| s.kinds()).copied().collect();
    if let Some(m) = &lw.moe {
        kinds.truncate(4);
        kinds.extend(expert_kinds(m.experts.len()).into_iter().map(|(_, k)| k));
        if m.shared.is_some() {
            kinds.extend(FfnProj::ALL.map(|proj| LayerTensor::SharedExpert { proj }));
        }
    }
    for kind in kinds {
        let routed_tokens = match kind {
            LayerTensor::Expert { expert, .. } => rows.get(expert as usize).copied(),
            _ => None,
        };
        reports.push(ModuleReport {
            routed_tokens,
            ..ModuleReport::new(hf_module(TensorId::Layer { index: i, kind }))
        });
    }
    let name = awq_layer_file_name(i);
    write_atomic(&state_dir.join(&name), &awq_layer_file_bytes(i, &scales)?)?;
    st.layer_files.push(name);
    st.awq_mappings.extend(mappings);
    Ok(reports)
}

/// Write the calibration result to `dest`: fp8-static's JSON file, or the GPTQ/AWQ directory
/// (the state directory's layer files plus its index).
fn write_output(
    samples: &Samples,
    opts: &CalibOptions,
    dest: &Path,
    state_dir: &Path,
    st: &State,
) -> Result<()> {
    let n = samples.n();
    let seq = samples.seq_len;
    let mut calib = CalibFile {
        format: FORMAT.into(),
        version: 1,
        method: method_name(&opts.method).into(),
        observer: None,
        precision: None,
        samples: n,
        seq_len: seq,
        samples_sha256: samples_sha(samples),
        input_scales: None,
        gptq: None,
        awq: None,
        modules: st.modules.clone(),
    };
    match &opts.method {
        Method::Fp8Static(kind) => {
            calib.observer = Some(observer_name(*kind));
            calib.precision = (opts.precision == Precision::F64).then(|| "f64".to_string());
            calib.input_scales = Some(
                st.modules
                    .iter()
                    .map(|m| {
                        let mut o = Observer::new(*kind);
                        o.max = f64::from(m.input_amax.unwrap_or(0.0));
                        (m.module.clone(), m.input_scale.unwrap_or_else(|| o.scale()))
                    })
                    .collect(),
            );
            if opts.overwrite && dest.is_dir() {
                std::fs::remove_dir_all(dest).map_err(|e| Error::io(dest, e))?;
            }
            write_atomic(dest, &calib.to_bytes())?;
        }
        Method::Gptq(_) | Method::Awq(_) => {
            if let Method::Awq(a) = &opts.method {
                calib.awq = Some(AwqScheme {
                    bits: 4,
                    group_size: a.group_size,
                    symmetric: a.symmetric,
                    duo_scaling: a.duo_scaling,
                    n_grid: a.n_grid,
                    layer_files: st.layer_files.clone(),
                    mappings: st.awq_mappings.clone(),
                });
            }
            if let Method::Gptq(g) = &opts.method {
                calib.gptq = Some(GptqScheme {
                    bits: g.bits,
                    group_size: g.group_size,
                    symmetric: true,
                    actorder: g.actorder.then(|| "weight".to_string()),
                    dampening: g.dampening,
                    block_size: g.block_size,
                    layer_files: st.layer_files.clone(),
                });
            }
            let mut out = OutputDir::begin(
                dest,
                OutputOptions {
                    resume: false,
                    overwrite: opts.overwrite,
                    dry_run: false,
                    allow_lossy: false,
                },
            )?;
            for name in &st.layer_files {
                let p = state_dir.join(name);
                let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                out.write_file(name, &b)?;
            }
            out.write_file(CALIB_JSON, &calib.to_bytes())?;
            out.commit(serde_json::Map::new())?;
        }
    }
    Ok(())
}

/// Run layer `lw` over every sample of `h` (in place), observing each linear's input.
fn observe_layer<T: Real, L: Project<T>>(
    model: &Model,
    lw: &LayerWeights<T, L>,
    rope: &RopeTable,
    h: &mut [T],
    seq: usize,
    kind: ObserverKind,
    tokens: ExpertTokens,
) -> ([Observer; 4], Option<ExpertObservers>) {
    let hid = model.config().hidden_size as usize;
    let mut obs = [Observer::new(kind); 4];
    let mut eobs = lw
        .moe
        .as_ref()
        .map(|m| ExpertObservers::new(kind, m.experts.len(), hid, m.shared.is_some()));
    for hc in h.chunks_mut(seq * hid) {
        layer_forward_moe(
            model,
            lw,
            rope,
            hc,
            seq,
            &mut |site, x| obs[site.index()].observe(x),
            &mut |kinds, x| {
                if let (Some(m), Some(eo)) = (&lw.moe, eobs.as_mut()) {
                    expert_inputs(m, tokens, kinds, x, &mut |e, down, x| {
                        eo.observe(e, down, x);
                    });
                }
            },
        );
    }
    (obs, eobs)
}

/// A GPTQ result's figures in the report.
fn gptq_report(module: String, r: &GptqResult) -> ModuleReport {
    ModuleReport {
        loss: Some(r.loss),
        damping: Some(r.damping),
        damping_retries: Some(r.retries),
        dead_columns: Some(r.dead_columns),
        ..ModuleReport::new(module)
    }
}

/// GPTQ on every expert of a block from its Hessians (`[gate/up, down]` and routed rows per
/// expert; the shared expert, on every token, in the last slot), the weights replaced by their dequantized GPTQ values. An expert that saw no row
/// is quantized with an identity Hessian: GPTQ's error feedback is then zero, so the result is
/// round-to-nearest on GPTQ's grid (reported as the module's `fallback`).
fn gptq_experts(
    m: &mut qforge_verify::moe::MoeWeights,
    ehs: Vec<([Hessian; 2], u64)>,
    index: u32,
    g: &GptqConfig,
    reports: &mut Vec<ModuleReport>,
    results: &mut Vec<(String, GptqResult)>,
) -> Result<()> {
    for (e, (hess, rows)) in ehs.into_iter().enumerate() {
        let [hgu, hd] = hess;
        for (down, hess) in [(false, hgu), (true, hd)] {
            let w = hess.w;
            let hm = if rows == 0 {
                let mut id = vec![0f32; w * w];
                id.iter_mut().step_by(w + 1).for_each(|v| *v = 1.0);
                id
            } else {
                hess.finish()
            };
            let projs: &[usize] = if down { &[2] } else { &[0, 1] };
            let shared = e == m.experts.len();
            for &p in projs {
                let proj = FfnProj::ALL[p];
                let (kind, lin) = match &mut m.shared {
                    Some(s) if shared => (LayerTensor::SharedExpert { proj }, &mut s[p]),
                    _ => (
                        LayerTensor::Expert {
                            expert: e as u32,
                            proj,
                        },
                        &mut m.experts[e][p],
                    ),
                };
                let module = hf_module(TensorId::Layer { index, kind });
                let r = gptq(&module, &lin.w, lin.out, lin.inp, &hm, g)?;
                lin.w = r.dequantize();
                reports.push(ModuleReport {
                    routed_tokens: (!shared).then_some(rows),
                    fallback: (rows == 0)
                        .then(|| "no routed token: round-to-nearest (identity Hessian)".into()),
                    ..gptq_report(module.clone(), &r)
                });
                results.push((module, r));
            }
        }
    }
    Ok(())
}

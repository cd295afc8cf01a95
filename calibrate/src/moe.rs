//! Calibration of mixture-of-experts blocks (Mixtral, Qwen3-MoE): each expert's gate/up and
//! down projections are calibrated on the rows the router sends to it, or optionally on every
//! token; the router (`block_sparse_moe.gate` / `mlp.gate`, GGUF `ffn_gate_inp`) is never
//! quantized, so it is not calibrated.
//!
//! Routed rows are what llm-compressor's observers and GPTQ hooks see by default: transformers'
//! `MixtralSparseMoeBlock.forward` / `Qwen3MoeSparseMoeBlock.forward` call each expert only on
//! `hidden_states[top_x]`. The all-token option follows llm-compressor's MoE calibration
//! modules with `calibrate_all_experts=True` (llmcompressor/modeling/, e.g.
//! `CalibrationGlm4MoeMoE`, `SequentialLlama4TextMoe` via `moe_context.MoECalibrationModule`):
//! every expert runs on every token so its hooks see all of them, while the block's output
//! still sums only the routed experts' outputs.
//!
//! An expert that receives no token: GPTQ quantizes it round-to-nearest (an identity Hessian,
//! for which GPTQ's error feedback is zero); fp8-static takes its gate/up scale from the
//! block's input over every token (the router's input, exactly the all-token statistic) and its
//! down scale from the largest down-projection amax of the block's other experts. Both say so in
//! the module's report (`fallback`).

use qforge_convert::{FfnProj, LayerTensor, TensorId};
use qforge_quantize::layout::hf_module;
use qforge_verify::moe::MoeWeights;
use qforge_verify::ops::swiglu;
use qforge_verify::{Project, Real};

use crate::observer::{Observer, ObserverKind};
use crate::output::ModuleReport;

/// Which rows an expert is calibrated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertTokens {
    /// The rows the router sends to it (llm-compressor's default forward).
    #[default]
    Routed,
    /// Every token (llm-compressor's `calibrate_all_experts`).
    All,
}

/// Turn the MoE observations of [`qforge_verify::moe::ffn`] into per-expert inputs: `sink(e,
/// down, x)` with `x` the gate/up input (`down == false`, `[rows, hidden]`) or the down
/// projection's input (`[rows, expert_ffn]`) of expert `e` (`e == n_expert`: the shared
/// expert, on every token). The router's input is shown as
/// `sink(usize::MAX, false, x)` (every token) so callers can keep all-token statistics.
pub fn expert_inputs<T: Real, L: Project<T>>(
    moe: &MoeWeights<T, L>,
    tokens: ExpertTokens,
    kinds: &[LayerTensor],
    x: &[T],
    sink: &mut dyn FnMut(usize, bool, &[T]),
) {
    match (kinds.first(), tokens) {
        (Some(LayerTensor::Router), _) => {
            sink(usize::MAX, false, x);
            if tokens == ExpertTokens::All {
                let hid = moe.router.len() / moe.experts.len().max(1);
                let rows = x.len() / hid.max(1);
                let mut g = vec![T::ZERO; rows * moe.ffn];
                let mut u = vec![T::ZERO; rows * moe.ffn];
                for (e, [gate, up, _]) in moe.experts.iter().enumerate() {
                    sink(e, false, x);
                    gate.project(x, rows, &mut g);
                    up.project(x, rows, &mut u);
                    swiglu(&mut g, &u);
                    sink(e, true, &g);
                }
            }
        }
        (Some(&LayerTensor::Expert { expert, proj }), ExpertTokens::Routed) => {
            sink(expert as usize, proj == FfnProj::Down, x);
        }
        // Llama 4's shared expert sees every token; it is slot `n_expert`
        (Some(&LayerTensor::SharedExpert { proj }), _) => {
            sink(moe.experts.len(), proj == FfnProj::Down, x);
        }
        _ => {}
    }
}

/// The expert modules of block `index` (gate, up, down of each expert), expert-major.
pub fn expert_kinds(n_expert: usize) -> Vec<(usize, LayerTensor)> {
    (0..n_expert)
        .flat_map(|e| {
            FfnProj::ALL.into_iter().map(move |proj| {
                (
                    e,
                    LayerTensor::Expert {
                        expert: e as u32,
                        proj,
                    },
                )
            })
        })
        .collect()
}

/// fp8-static observers of one block's experts: per expert its gate/up and down inputs, and
/// the block input over every token (the zero-token fallback of gate/up).
#[derive(Debug, Clone)]
pub struct ExpertObservers {
    /// `[gate/up, down]` per expert.
    pub experts: Vec<[Observer; 2]>,
    /// Rows each expert saw (gate/up input).
    pub rows: Vec<u64>,
    /// The router's input (every token).
    pub all: Observer,
    /// `[gate/up, down]` of Llama 4's shared expert (every token).
    pub shared: Option<[Observer; 2]>,
    hidden: usize,
}

impl ExpertObservers {
    /// Observers for `n_expert` experts of a block of width `hidden` (and its shared expert).
    pub fn new(kind: ObserverKind, n_expert: usize, hidden: usize, shared: bool) -> Self {
        ExpertObservers {
            experts: vec![[Observer::new(kind); 2]; n_expert],
            rows: vec![0; n_expert],
            all: Observer::new(kind),
            shared: shared.then(|| [Observer::new(kind); 2]),
            hidden,
        }
    }

    /// One observation from [`expert_inputs`].
    pub fn observe<T: Real>(&mut self, e: usize, down: bool, x: &[T]) {
        if e == usize::MAX {
            self.all.observe(x);
            return;
        }
        if e == self.experts.len() {
            if let Some(o) = self.shared.as_mut() {
                o[usize::from(down)].observe(x);
            }
            return;
        }
        let Some(o) = self.experts.get_mut(e) else {
            return;
        };
        o[usize::from(down)].observe(x);
        if !down {
            self.rows[e] += (x.len() / self.hidden.max(1)) as u64;
        }
    }

    /// The modules' reports of block `index` (gate, up, down of each expert, then of the shared
    /// expert); `f64`: the scale
    /// computed in `f64` ([`Observer::scale_f64`]).
    pub fn reports(&self, index: u32, f64_scale: bool) -> Vec<ModuleReport> {
        let down_max = self
            .experts
            .iter()
            .zip(&self.rows)
            .filter(|(_, &r)| r > 0)
            .map(|(o, _)| o[1].amax())
            .fold(0f64, f64::max);
        let mut out = Vec::new();
        for (e, kind) in expert_kinds(self.experts.len()) {
            let down = matches!(
                kind,
                LayerTensor::Expert {
                    proj: FfnProj::Down,
                    ..
                }
            );
            let rows = self.rows[e];
            let mut o = self.experts[e][usize::from(down)];
            let fallback = (rows == 0).then(|| {
                if down {
                    o.min = 0.0;
                    o.max = down_max;
                    "no routed token: down scale = largest of the block's other experts".into()
                } else {
                    o = self.all;
                    "no routed token: gate/up scale from every token of the block".into()
                }
            });
            out.push(ModuleReport {
                #[allow(clippy::cast_possible_truncation)] // reported as f32
                input_amax: Some(o.amax() as f32),
                input_scale: f64_scale.then(|| o.scale_f64()),
                routed_tokens: Some(rows),
                fallback,
                ..ModuleReport::new(hf_module(TensorId::Layer { index, kind }))
            });
        }
        if let Some(sh) = &self.shared {
            for proj in FfnProj::ALL {
                let o = sh[usize::from(proj == FfnProj::Down)];
                let kind = LayerTensor::SharedExpert { proj };
                out.push(ModuleReport {
                    #[allow(clippy::cast_possible_truncation)] // reported as f32
                    input_amax: Some(o.amax() as f32),
                    input_scale: f64_scale.then(|| o.scale_f64()),
                    ..ModuleReport::new(hf_module(TensorId::Layer { index, kind }))
                });
            }
        }
        out
    }
}

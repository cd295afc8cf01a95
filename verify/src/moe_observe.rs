//! What the importance-matrix pass sees of a mixture-of-experts block: llama-imatrix's
//! per-expert sums and counts.
//!
//! [`crate::moe::ffn`] shows its observer the router's input (every token, tagged
//! [`LayerTensor::Router`]) and, per expert, the rows routed to it (tagged
//! [`LayerTensor::Expert`]). llama.cpp's tools/imatrix/imatrix.cpp `collect_imatrix`, on a
//! `GGML_OP_MUL_MAT_ID` (the `ffn_{gate,up,down}_exps` stacks), keeps `values` of
//! `ne0 · n_expert` (expert `e`'s columns at `e·ne0`) and `counts` of `n_expert`, adding `x[j]²`
//! of every row routed to expert `e` and 1 to `counts[e]` per routed row; the router
//! `ffn_gate_inp` is a plain `MUL_MAT` over every token (one count per token). Llama 4's shared
//! expert (tagged [`LayerTensor::SharedExpert`]) is three plain `MUL_MAT`s over every token,
//! `ffn_{gate,up,down}_shexp` (llama.cpp src/models/llama.cpp, the `ffn_up_shexp` `build_ffn`
//! of Llama 4's MoE blocks): entries of their own, one count per token.

use std::collections::BTreeMap;

use qforge_convert::{FfnProj, LayerTensor, NameScheme, TensorId, TensorKey};
use qforge_quantize::imatrix::ImatrixEntry;

use crate::eval::accumulate_squares;

/// True for the observations that belong to the MoE block (the router, an expert or the
/// shared expert).
pub fn is_moe(kinds: &[LayerTensor]) -> bool {
    matches!(
        kinds.first(),
        Some(LayerTensor::Router | LayerTensor::Expert { .. } | LayerTensor::SharedExpert { .. })
    )
}

/// Per-expert Σx² and routed-row counts of every MoE block, as llama-imatrix collects them.
#[derive(Debug)]
pub struct ExpertSums {
    /// `(layer, gate-up or down)` → (`[n_expert · cols]` sums, `[n_expert]` counts). The gate
    /// and up stacks read the same rows; their sums are kept once.
    stacks: BTreeMap<(u32, bool), (Vec<f32>, Vec<i64>)>,
    /// layer → (router input Σx², tokens).
    routers: BTreeMap<u32, (Vec<f32>, i64)>,
    /// `(layer, down)` → (the shared expert's gate-up or down input Σx², tokens).
    shared: BTreeMap<(u32, bool), (Vec<f32>, i64)>,
    n_expert: usize,
    hidden: usize,
    expert_ffn: usize,
}

impl ExpertSums {
    /// An empty collector for blocks of `n_expert` experts of width `expert_ffn` on a model of
    /// width `hidden`.
    pub fn new(n_expert: usize, hidden: usize, expert_ffn: usize) -> Self {
        ExpertSums {
            stacks: BTreeMap::new(),
            routers: BTreeMap::new(),
            shared: BTreeMap::new(),
            n_expert,
            hidden,
            expert_ffn,
        }
    }

    /// Add one observation of block `layer` (`x` is `[rows, cols]`); observations that are not
    /// the MoE block's, or whose expert or width does not fit, are ignored.
    pub fn observe(&mut self, layer: u32, kinds: &[LayerTensor], x: &[f32]) {
        match kinds.first() {
            Some(LayerTensor::Router) => {
                let cols = self.hidden;
                if cols == 0 || x.len() % cols != 0 {
                    return;
                }
                let (s, n) = self
                    .routers
                    .entry(layer)
                    .or_insert_with(|| (vec![0f32; cols], 0));
                accumulate_squares(s, x);
                *n += (x.len() / cols) as i64;
            }
            Some(&LayerTensor::Expert { expert, proj }) => {
                let e = expert as usize;
                let down = proj == FfnProj::Down;
                let cols = if down { self.expert_ffn } else { self.hidden };
                if e >= self.n_expert || cols == 0 || x.len() % cols != 0 {
                    return;
                }
                let n_expert = self.n_expert;
                let (s, c) = self
                    .stacks
                    .entry((layer, down))
                    .or_insert_with(|| (vec![0f32; cols * n_expert], vec![0; n_expert]));
                accumulate_squares(&mut s[e * cols..(e + 1) * cols], x);
                c[e] += (x.len() / cols) as i64;
            }
            Some(&LayerTensor::SharedExpert { proj }) => {
                // Llama 4's shared expert is as wide as one routed expert
                // (Llama4TextMoe: `Llama4TextMLP(config)` of `intermediate_size`)
                let down = proj == FfnProj::Down;
                let cols = if down { self.expert_ffn } else { self.hidden };
                if cols == 0 || x.len() % cols != 0 {
                    return;
                }
                let (s, n) = self
                    .shared
                    .entry((layer, down))
                    .or_insert_with(|| (vec![0f32; cols], 0));
                accumulate_squares(s, x);
                *n += (x.len() / cols) as i64;
            }
            _ => {}
        }
    }

    /// The GGUF imatrix entries: `blk.N.ffn_gate_inp.weight`,
    /// `blk.N.ffn_{gate,up,down}_exps.weight` and (Llama 4) `blk.N.ffn_{gate,up,down}_shexp.weight`
    /// of every MoE block observed; the dense FFN entries of those blocks (which have no dense
    /// FFN) are removed from `entries`.
    pub fn finish(self, entries: &mut BTreeMap<String, ImatrixEntry>) {
        for (layer, (sums, n)) in self.routers {
            for p in FfnProj::ALL {
                let dense = p.gguf_stack(layer).replace("_exps.", ".");
                entries.remove(&dense);
            }
            entries.insert(
                format!("blk.{layer}.ffn_gate_inp.weight"),
                ImatrixEntry {
                    sums,
                    counts: vec![n],
                },
            );
        }
        for ((layer, down), (sums, n)) in self.shared {
            let projs: &[FfnProj] = if down {
                &[FfnProj::Down]
            } else {
                &[FfnProj::Gate, FfnProj::Up]
            };
            for &proj in projs {
                let id = TensorId::Layer {
                    index: layer,
                    kind: LayerTensor::SharedExpert { proj },
                };
                if let Some(name) = NameScheme::Gguf.name(TensorKey::weight(id)) {
                    entries.insert(
                        name,
                        ImatrixEntry {
                            sums: sums.clone(),
                            counts: vec![n],
                        },
                    );
                }
            }
        }
        for ((layer, down), (sums, counts)) in self.stacks {
            let projs: &[FfnProj] = if down {
                &[FfnProj::Down]
            } else {
                &[FfnProj::Gate, FfnProj::Up]
            };
            for p in projs {
                entries.insert(
                    p.gguf_stack(layer),
                    ImatrixEntry {
                        sums: sums.clone(),
                        counts: counts.clone(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_rows_land_in_their_expert_slot() {
        let mut s = ExpertSums::new(3, 2, 1);
        s.observe(0, &[LayerTensor::Router], &[1.0, 2.0, 3.0, 4.0]);
        let ex = |expert, proj| LayerTensor::Expert { expert, proj };
        s.observe(
            0,
            &[ex(2, FfnProj::Gate), ex(2, FfnProj::Up)],
            &[1.0, 2.0, 3.0, 4.0],
        );
        s.observe(0, &[ex(2, FfnProj::Down)], &[0.5, 2.0]);
        // out of range: ignored
        s.observe(0, &[ex(3, FfnProj::Down)], &[0.5]);
        let mut e = BTreeMap::new();
        e.insert(
            "blk.0.ffn_up.weight".to_string(),
            ImatrixEntry {
                sums: vec![0.0; 2],
                counts: vec![2],
            },
        );
        s.finish(&mut e);
        assert!(!e.contains_key("blk.0.ffn_up.weight"));
        assert_eq!(e["blk.0.ffn_gate_inp.weight"].sums, vec![10.0, 20.0]);
        assert_eq!(e["blk.0.ffn_gate_inp.weight"].counts, vec![2]);
        for n in ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight"] {
            assert_eq!(e[n].sums, vec![0.0, 0.0, 0.0, 0.0, 10.0, 20.0]);
            assert_eq!(e[n].counts, vec![0, 0, 2]);
        }
        assert_eq!(e["blk.0.ffn_down_exps.weight"].sums, vec![0.0, 0.0, 4.25]);
        assert_eq!(e["blk.0.ffn_down_exps.weight"].counts, vec![0, 0, 2]);
        assert!(!e.keys().any(|n| n.contains("shexp")));
    }

    #[test]
    fn shared_expert_rows_get_entries_of_their_own() {
        let mut s = ExpertSums::new(3, 2, 1);
        let sh = |proj| LayerTensor::SharedExpert { proj };
        s.observe(1, &[LayerTensor::Router], &[1.0, 2.0, 3.0, 4.0]);
        s.observe(
            1,
            &[sh(FfnProj::Gate), sh(FfnProj::Up)],
            &[1.0, 2.0, 3.0, 4.0],
        );
        s.observe(1, &[sh(FfnProj::Down)], &[0.5, 2.0]);
        // a width that does not fit: ignored
        s.observe(1, &[sh(FfnProj::Gate), sh(FfnProj::Up)], &[1.0, 2.0, 3.0]);
        let mut e = BTreeMap::new();
        s.finish(&mut e);
        for n in ["blk.1.ffn_gate_shexp.weight", "blk.1.ffn_up_shexp.weight"] {
            assert_eq!(e[n].sums, vec![10.0, 20.0], "{n}");
            assert_eq!(e[n].counts, vec![2], "{n}");
        }
        assert_eq!(e["blk.1.ffn_down_shexp.weight"].sums, vec![4.25]);
        assert_eq!(e["blk.1.ffn_down_shexp.weight"].counts, vec![2]);
        assert!(is_moe(&[sh(FfnProj::Down)]));
    }
}

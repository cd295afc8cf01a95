//! The layer-major engine's weight stream (DESIGN.md "Verification", specs/gpu.md Appendix B):
//! layer `i`'s weights of one or more models, read and dequantized in order, with layer `i+1`
//! prepared on a helper thread while the caller computes layer `i` (`prefetch`).
//!
//! The helper hands each layer over a rendezvous channel, so at most two layers per model are
//! in memory: the one being computed and the one being read. Reading and dequantizing are
//! deterministic, so prefetching changes no result bit; it only moves the read (page faults on
//! a cold page cache, decompression of packed formats) off the compute path. The helper runs
//! its own rayon pool of as many threads as the caller's, so `--threads` bounds each side.

use std::sync::mpsc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::model::{LayerWeights, Model};

/// Where the time of a weight stream went.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StreamStats {
    /// Layers delivered (per model).
    pub layers: u64,
    /// Seconds spent reading and dequantizing (on the helper thread when prefetching).
    pub load_seconds: f64,
    /// Seconds the caller waited for weights (all of `load_seconds` without prefetch).
    pub wait_seconds: f64,
}

impl StreamStats {
    /// Add another stream's figures.
    pub fn add(&mut self, o: &StreamStats) {
        self.layers += o.layers;
        self.load_seconds += o.load_seconds;
        self.wait_seconds += o.wait_seconds;
    }
}

fn load_all(models: &[&Model], index: u32) -> Result<Vec<LayerWeights>> {
    // MoE experts stay on the checkpoint: the forward dequantizes them one at a time
    models.iter().map(|m| m.layer_streamed(index)).collect()
}

/// Call `f(i, weights)` for `i` in `0..layers`, `weights[j]` being layer `i` of `models[j]`,
/// in order. With `prefetch`, layer `i+1` is read on a helper thread while `f` runs on layer
/// `i`. The first error (of a read or of `f`) ends the stream and is returned.
pub fn stream_layers<F>(
    models: &[&Model],
    layers: u32,
    prefetch: bool,
    stats: &mut StreamStats,
    mut f: F,
) -> Result<()>
where
    F: FnMut(u32, Vec<LayerWeights>) -> Result<()>,
{
    if !prefetch || layers <= 1 {
        for i in 0..layers {
            let t = Instant::now();
            let w = load_all(models, i)?;
            let s = t.elapsed().as_secs_f64();
            stats.load_seconds += s;
            stats.wait_seconds += s;
            stats.layers += 1;
            f(i, w)?;
        }
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("qforge-prefetch-{i}"))
        .build()
        .map_err(|e| Error::InvalidOption {
            name: "threads",
            reason: format!("cannot start the prefetch pool: {e}"),
        })?;
    std::thread::scope(|s| {
        // Rendezvous: the helper holds at most one finished layer until the caller takes it.
        let (tx, rx) = mpsc::sync_channel::<(Result<Vec<LayerWeights>>, f64)>(0);
        let pool = &pool;
        let helper = s.spawn(move || {
            for i in 0..layers {
                let t = Instant::now();
                let r = pool.install(|| load_all(models, i));
                let failed = r.is_err();
                if tx.send((r, t.elapsed().as_secs_f64())).is_err() || failed {
                    break;
                }
            }
        });
        let mut run = || -> Result<()> {
            for i in 0..layers {
                let t = Instant::now();
                let Ok((w, load)) = rx.recv() else {
                    return Err(Error::InvalidOption {
                        name: "prefetch",
                        reason: format!("the prefetch thread stopped before layer {i}"),
                    });
                };
                stats.wait_seconds += t.elapsed().as_secs_f64();
                stats.load_seconds += load;
                stats.layers += 1;
                f(i, w?)?;
            }
            Ok(())
        };
        let r = run();
        // Unblock a helper that is waiting to hand over a layer nobody will take.
        drop(rx);
        if helper.join().is_err() && r.is_ok() {
            return Err(Error::InvalidOption {
                name: "prefetch",
                reason: "the prefetch thread panicked".into(),
            });
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ForwardOptions;

    fn tiny() -> Model {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/hf");
        Model::open(&dir, ForwardOptions::default()).expect("tiny fixture")
    }

    fn weights(lw: &LayerWeights) -> Vec<u32> {
        [&lw.q, &lw.k, &lw.v, &lw.o, &lw.gate, &lw.up, &lw.down]
            .iter()
            .flat_map(|l| l.w.iter().map(|v| v.to_bits()))
            .chain(lw.attn_norm.iter().map(|v| v.to_bits()))
            .chain(lw.ffn_norm.iter().map(|v| v.to_bits()))
            .collect()
    }

    #[test]
    fn prefetch_delivers_the_same_layers_in_order() {
        let m = tiny();
        let nl = m.config().num_layers as u32;
        let mut got = [Vec::new(), Vec::new()];
        for (slot, prefetch) in [false, true].into_iter().enumerate() {
            let mut stats = StreamStats::default();
            stream_layers(&[&m, &m], nl, prefetch, &mut stats, |i, w| {
                assert_eq!(w.len(), 2);
                assert_eq!(weights(&w[0]), weights(&w[1]));
                got[slot].push((i, weights(&w[0])));
                Ok(())
            })
            .unwrap();
            assert_eq!(stats.layers, u64::from(nl));
            assert!(stats.wait_seconds <= stats.load_seconds + 1.0);
        }
        assert_eq!(got[0], got[1]);
        assert_eq!(
            got[0].iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..nl).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_error_ends_the_stream() {
        let m = tiny();
        for prefetch in [false, true] {
            let mut seen = 0;
            let r = stream_layers(&[&m], 2, prefetch, &mut StreamStats::default(), |i, _| {
                seen += 1;
                if i == 0 {
                    Err(Error::Mismatch("stop".into()))
                } else {
                    Ok(())
                }
            });
            assert!(matches!(r, Err(Error::Mismatch(_))));
            assert_eq!(seen, 1);
            // a read that fails (a layer past the model) is returned, not a panic
            let r = stream_layers(&[&m], 3, prefetch, &mut StreamStats::default(), |_, _| {
                Ok(())
            });
            assert!(r.is_err(), "layer 2 of a 2-layer model must fail");
        }
    }
}

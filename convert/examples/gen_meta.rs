//! Write a random Meta model-parallel checkpoint (`consolidated.NN.pth` + `params.json`) with
//! the real widths of a Llama release and only a few layers, for scale runs:
//!
//! ```text
//! cargo run --release -p qforge-convert --example gen_meta -- OUT_DIR [--shape 405b|8b]
//!     [--layers 2] [--mp 8] [--seed 0]
//! ```
//!
//! Llama 3.1 405B with 2 layers and `--mp 8` is about 21 GB. Each rank's file is written the
//! way `torch.save` writes it (qforge's `.pth` writer: stored ZIP entries aligned to 64 bytes,
//! pickle protocol 2), each tensor split as fairscale splits it (embeddings, Q/K/V, w1, w3 and
//! the output along dim 0; wo and w2 along dim 1; norms replicated). Values are BF16, roughly
//! N(0, 0.02²) (norms 1 + that), from a seeded generator per (tensor, rank): the bytes depend
//! only on the arguments; replicated tensors are equal on every rank. Data is generated and written in 64 MiB pieces, so memory stays small.
#![allow(missing_docs)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use qforge_codecs::DType;
use qforge_convert::export_meta::split_dim;
use qforge_convert::write::pth::{archive_name, plan, PthWriter};
use qforge_convert::write::safetensors::TensorSpec;
use qforge_convert::{LayerTensor, ModelConfig, NameScheme, TensorId, TensorKey};
use rayon::prelude::*;

const PIECE: usize = 32 << 20; // elements per generated piece (64 MiB of BF16)

fn params(shape: &str, layers: u64) -> Option<String> {
    let (dim, heads, kv, mult, multiple_of) = match shape {
        "405b" => (16384, 128, 8, "1.2", 4096),
        "70b" => (8192, 64, 8, "1.3", 4096),
        "8b" => (4096, 32, 8, "1.3", 1024),
        _ => return None,
    };
    Some(format!(
        "{{\"dim\": {dim}, \"n_layers\": {layers}, \"n_heads\": {heads}, \"n_kv_heads\": {kv}, \
         \"vocab_size\": 128256, \"ffn_dim_multiplier\": {mult}, \"multiple_of\": {multiple_of}, \
         \"norm_eps\": 1e-05, \"rope_theta\": 500000.0, \"use_scaled_rope\": true}}"
    ))
}

/// splitmix64: a tiny, good-enough seeded generator.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i` of a stream: the sum of four 16-bit uniforms (Irwin–Hall, close to normal),
/// scaled to standard deviation 0.02, plus `offset`, as BF16 (round to nearest even).
fn value(stream: u64, i: u64, offset: f32) -> [u8; 2] {
    let r = mix(stream ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let s: u32 = (0..4).map(|k| ((r >> (16 * k)) & 0xFFFF) as u32).sum();
    // mean 4·32767.5, variance 4·(65536²−1)/12
    let z = (s as f32 - 131_070.0) / 37_837.2;
    let x = offset + 0.02 * z;
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    (rounded as u16).to_le_bytes()
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let (mut shape, mut layers, mut mp, mut seed) = ("405b".to_owned(), 2u64, 8usize, 0u64);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--shape" => shape = val()?,
            "--layers" => layers = val()?.parse().map_err(|e| format!("--layers: {e}"))?,
            "--mp" => mp = val()?.parse().map_err(|e| format!("--mp: {e}"))?,
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            _ if !a.starts_with('-') && out.is_none() => out = Some(a.into()),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let out = out.ok_or("usage: gen_meta OUT_DIR [--shape 405b|70b|8b] [--layers N] [--mp N]")?;
    let text = params(&shape, layers).ok_or(format!("unknown shape {shape}"))?;
    let cfg = ModelConfig::from_meta_params(&text, None).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join("params.json"), &text).map_err(|e| e.to_string())?;

    // Meta's registration order: embeddings, blocks (attention, FFN, norms), norm, output.
    let mut ids = vec![TensorId::TokenEmbedding];
    for index in 0..u32::try_from(cfg.num_layers).map_err(|e| e.to_string())? {
        for kind in [
            LayerTensor::Q,
            LayerTensor::K,
            LayerTensor::V,
            LayerTensor::O,
            LayerTensor::Gate,
            LayerTensor::Down,
            LayerTensor::Up,
            LayerTensor::AttnNorm,
            LayerTensor::FfnNorm,
        ] {
            ids.push(TensorId::Layer { index, kind });
        }
    }
    ids.extend([TensorId::OutputNorm, TensorId::Output]);
    let tensors: Vec<(String, Vec<u64>, Option<usize>, f32)> = ids
        .iter()
        .map(|&id| {
            let name = NameScheme::Meta
                .name(TensorKey::weight(id))
                .expect("every role has a Meta name");
            let offset = if cfg.expected_shape(id).len() == 1 {
                1.0
            } else {
                0.0
            };
            (name, cfg.expected_shape(id), split_dim(id), offset)
        })
        .collect();

    let start = std::time::Instant::now();
    let mut total = 0u64;
    for r in 0..mp {
        let file = format!("consolidated.{r:02}.pth");
        let specs = tensors
            .iter()
            .map(|(name, shape, split, _)| {
                let mut shape = shape.clone();
                if let Some(d) = split {
                    if shape[*d] % mp as u64 != 0 {
                        return Err(format!(
                            "{name}: dim {d} of {shape:?} is not divisible by {mp}"
                        ));
                    }
                    shape[*d] /= mp as u64;
                }
                Ok(TensorSpec {
                    name: name.clone(),
                    dtype: DType::BF16,
                    shape,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let p = plan(&archive_name(&file), specs.clone()).map_err(|e| e.to_string())?;
        let path = out.join(&file);
        let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w =
            PthWriter::new(BufWriter::with_capacity(8 << 20, f), p).map_err(|e| e.to_string())?;
        for (spec, (name, _, split, offset)) in specs.iter().zip(&tensors) {
            let n = spec.shape.iter().product::<u64>();
            // replicated tensors (norms) are the same on every rank, as torch saves them
            let rank = if split.is_some() {
                mix(r as u64 + 1)
            } else {
                0
            };
            let stream = mix(seed ^ rank ^ name.bytes().fold(0, |h, b| mix(h ^ u64::from(b))));
            w.begin_tensor(name).map_err(|e| e.to_string())?;
            let mut done = 0u64;
            let mut buf = Vec::new();
            while done < n {
                let len = (n - done).min(PIECE as u64) as usize;
                buf.resize(2 * len, 0);
                buf.par_chunks_mut(2).enumerate().for_each(|(i, b)| {
                    b.copy_from_slice(&value(stream, done + i as u64, *offset));
                });
                w.write_data(&buf).map_err(|e| e.to_string())?;
                done += len as u64;
            }
            w.end_tensor().map_err(|e| e.to_string())?;
            total += 2 * n;
        }
        let mut f = w.finish().map_err(|e| e.to_string())?;
        f.flush().map_err(|e| e.to_string())?;
        eprintln!(
            "{file}: done ({:.1} GB so far, {:.0} s)",
            total as f64 / 1e9,
            start.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "wrote {} ({} layers, mp {mp}): {total} bytes of tensor data in {:.0} s",
        out.display(),
        cfg.num_layers,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_meta: {e}");
            ExitCode::FAILURE
        }
    }
}

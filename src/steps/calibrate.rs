//! The calibration step: layer-by-layer calibration (static FP8 activation scales, GPTQ, AWQ)
//! from parsed settings ([`CalibrateArgs`]: `qforge calibrate` parses them, a recipe builds them).

use qforge_quantize::dequant::WeightRead;
use std::io::Write;

use anyhow::{bail, Result};
use qforge_calibrate::{
    calibrate, AwqConfig, CalibOptions, GptqConfig, Method, ObserverKind, Precision, Samples,
};
use qforge_verify::{ForwardOptions, Model, TextTokenizer, W8a8Mode};

use crate::cli::{CalibMethod, CalibObserver, CalibPrecision, CalibrateArgs};

/// Parse a GPTQ `--scheme` (any name `quantize` takes for integer weights: int4-g<N>,
/// int4-row, int8-g<N>, int8-row, W4A16, …) into (bits, group size).
pub fn parse_gptq_scheme(s: &str) -> Result<(u8, Option<usize>)> {
    use crate::steps::quantize::parse_scheme;
    use qforge_quantize::layout::HfScheme;
    match parse_scheme(s, false).map(|s| s.hf().and_then(HfScheme::integer_codes)) {
        Ok(Some(p)) => Ok((p.bits, p.group_size)),
        _ => bail!("--scheme {s:?}: GPTQ schemes are int4-g<N>, int4-row, int8-g<N>, int8-row"),
    }
}

pub fn run(args: &CalibrateArgs) -> Result<()> {
    crate::steps::eval::check_device(args.device)?;
    let method = match args.method {
        CalibMethod::Fp8Static => Method::Fp8Static(match args.observer {
            CalibObserver::Minmax => ObserverKind::MinMax,
            CalibObserver::Percentile => {
                if !(args.percentile > 0.0 && args.percentile <= 100.0) {
                    return Err(crate::cli::UsageError(format!(
                        "--percentile {} must be in (0, 100]",
                        args.percentile
                    ))
                    .into());
                }
                ObserverKind::Percentile(args.percentile)
            }
        }),
        CalibMethod::Gptq => {
            let (bits, group_size) = parse_gptq_scheme(&args.scheme).map_err(crate::cli::usage)?;
            let actorder = match args.actorder.to_ascii_lowercase().as_str() {
                "weight" | "static" => true,
                "none" | "false" => false,
                "group" | "dynamic" => bail!(
                    "--actorder group needs a g_idx, which compressed-tensors 0.20 removed\n  \
                     hint: use --actorder weight (scales from natural groups, no g_idx)"
                ),
                o => bail!("--actorder {o:?}: use weight or none"),
            };
            Method::Gptq(GptqConfig {
                bits,
                group_size,
                actorder,
                dampening: args.dampening,
                block_size: args.block_size,
                bf16: true,
            })
        }
        CalibMethod::Awq => {
            let (bits, group_size) = parse_gptq_scheme(&args.scheme).map_err(crate::cli::usage)?;
            if bits != 4 {
                bail!(
                    "--scheme {}: AWQ searches INT4 schemes (int4-g<N>, int4-row)",
                    args.scheme
                );
            }
            Method::Awq(AwqConfig {
                group_size,
                symmetric: !args.asym,
                bf16: true,
                ..AwqConfig::default()
            })
        }
    };
    if args.asym && args.method != CalibMethod::Awq {
        bail!("--asym applies to --method awq (GPTQ is symmetric)");
    }
    let model = Model::open(
        &args.model,
        ForwardOptions {
            w8a8: W8a8Mode::Off,
            ggml_act_quant: false,
            kv_f16: false,
            ggml_cpu_ops: false,
        },
    )?;
    crate::commands::warn_long_ctx(model.config(), "--seq-len", args.seq_len);
    crate::commands::log_read("model", &model.ckpt);
    let mut method = method;
    if let Method::Awq(a) = &mut method {
        // fake quantization in the weights' dtype, as compressed-tensors does
        let q0 = qforge_convert::TensorId::Layer {
            index: 0,
            kind: qforge_convert::LayerTensor::Q,
        };
        a.bf16 = matches!(
            model.ckpt.weight_storage(q0)?,
            qforge_quantize::dequant::WeightStorage::Plain(qforge_codecs::DType::BF16)
        );
    }
    if let Method::Gptq(g) = &mut method {
        // compressed-tensors computes scales in the weights' dtype: BF16 arithmetic for a BF16
        // model (the default `quantize --dtype bf16` then stores them exactly), F32 otherwise.
        let q0 = qforge_convert::TensorId::Layer {
            index: 0,
            kind: qforge_convert::LayerTensor::Q,
        };
        g.bf16 = matches!(
            model.ckpt.weight_storage(q0)?,
            qforge_quantize::dequant::WeightStorage::Plain(qforge_codecs::DType::BF16)
        );
    }
    let samples = if let Some(p) = &args.tokens {
        Samples::from_json_file(p)?
    } else {
        let tok = TextTokenizer::for_checkpoint(&model.ckpt)?;
        let mut ids = Vec::new();
        for p in &args.data {
            let text = crate::commands::read_text(p)?;
            ids.extend(tok.encode(&text)?);
        }
        Samples::draw(&ids, args.seq_len, args.samples, args.seed, tok.bos)?
    };
    if let Some(p) = &args.samples_out {
        qforge_stage::write_atomic(p, &samples.to_json())?;
    }
    let opts = CalibOptions {
        method,
        state_dir: None,
        overwrite: args.overwrite,
        progress: !args.json && !args.quiet,
        stop_after_layer: args.stop_after_layer,
        precision: match args.precision {
            CalibPrecision::F32 => Precision::F32,
            CalibPrecision::F64 => Precision::F64,
        },
        expert_tokens: if args.all_experts {
            qforge_calibrate::moe::ExpertTokens::All
        } else {
            qforge_calibrate::moe::ExpertTokens::Routed
        },
    };
    let summary = qforge_verify::with_threads(args.threads, || {
        calibrate(&model, &samples, &opts, &args.output)
    })??;
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        writeln!(
            std::io::stderr(),
            "calibrated {} modules over {} layers ({} samples x {} tokens) in {:.1} s: wrote {}",
            summary.modules.len(),
            summary.layers,
            samples.n(),
            samples.seq_len,
            summary.seconds,
            args.output.display()
        )?;
    }
    Ok(())
}

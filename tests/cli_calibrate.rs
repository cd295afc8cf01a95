//! `qforge calibrate` end to end on a small random model: fp8-static scales are the max-abs of
//! each linear's captured input / 448; a GPTQ run stopped after a layer resumes to the same
//! bytes as an uninterrupted run (at any thread count); `qforge quantize --calib DIR` writes
//! exactly the GPTQ codes and scales; AWQ likewise resumes to the same bytes and its scales are
//! folded by `qforge quantize --calib DIR`.

use qforge_quantize::dequant::WeightRead;
use std::path::{Path, PathBuf};
use std::process::Command;

use qforge_calibrate::engine::{layer_forward, Site};
use qforge_calibrate::Samples;
use qforge_verify::{ForwardOptions, Model, W8a8Mode};

#[path = "support/model.rs"]
mod model;
use model::{files, make_model, SMALL};

const QFORGE: &str = env!("CARGO_BIN_EXE_qforge");

fn tokens(path: &Path, n: usize, seq: usize, vocab: u32) {
    let mut x = 12345u64;
    let samples: Vec<Vec<u32>> = (0..n)
        .map(|_| {
            (0..seq)
                .map(|_| {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((x >> 33) as u32) % vocab
                })
                .collect()
        })
        .collect();
    std::fs::write(
        path,
        serde_json::json!({"seq_len": seq, "samples": samples}).to_string(),
    )
    .unwrap();
}

/// A temporary directory holding the SMALL random model `m` and `n` token samples `t.json` of
/// `seq` tokens.
fn small_model_and_tokens(n: usize, seq: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (m, t) = (dir.path().join("m"), dir.path().join("t.json"));
    make_model(&m, SMALL);
    tokens(&t, n, seq, 4096);
    (dir, m, t)
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(QFORGE).args(args).output().unwrap()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn fp8_static_scales_are_the_captured_max_abs() {
    let dir = tempfile::tempdir().unwrap();
    let (m, t, out) = (
        dir.path().join("m"),
        dir.path().join("t.json"),
        dir.path().join("c.json"),
    );
    make_model(&m, SMALL);
    tokens(&t, 3, 24, 4096);
    let o = run(&[
        "calibrate",
        p(&m),
        "--tokens",
        p(&t),
        "--method",
        "fp8-static",
        "-o",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let calib: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let scales = &calib["input_scales"];
    assert_eq!(scales.as_object().unwrap().len(), 2 * 7);

    // Direct max-abs over every linear's input, layer by layer through the unquantized model.
    let model = Model::open(
        &m,
        ForwardOptions {
            w8a8: W8a8Mode::Off,
            ..ForwardOptions::default()
        },
    )
    .unwrap();
    let s = Samples::from_json_file(&t).unwrap();
    let hid = model.config().hidden_size as usize;
    let rope = model.rope_table(s.seq_len);
    let mut h = model.embed(&s.flat()).unwrap();
    for i in 0..2u32 {
        let lw = model.layer(i).unwrap();
        let mut amax = [0f32; 4];
        for hc in h.chunks_mut(s.seq_len * hid) {
            layer_forward(&model, &lw, &rope, hc, s.seq_len, &mut |site, x| {
                let k = site as usize;
                amax[k] = x.iter().fold(amax[k], |m, v| m.max(v.abs()));
            });
        }
        for (site, names) in [
            (
                Site::Qkv,
                &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..],
            ),
            (Site::O, &["self_attn.o_proj"][..]),
            (Site::GateUp, &["mlp.gate_proj", "mlp.up_proj"][..]),
            (Site::Down, &["mlp.down_proj"][..]),
        ] {
            for n in names {
                let got = scales[format!("model.layers.{i}.{n}")].as_f64().unwrap() as f32;
                assert_eq!(got, amax[site as usize] / 448.0, "layer {i} {n}");
                assert!(got > 0.0);
            }
        }
    }

    // The file feeds quantize --scheme fp8-static.
    let q = dir.path().join("q");
    let o = run(&[
        "quantize",
        p(&m),
        p(&q),
        "--scheme",
        "fp8-static",
        "--calib",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A plain f64 Llama layer, written out loop by loop (HF half-split RoPE, causal GQA), for one
/// sample `x` (`[seq, hidden]`, in place); returns the max |input| of q/k/v, o, gate/up, down.
fn naive_f64_layer(lw: &qforge_verify::LayerWeights, x: &mut [f64], seq: usize) -> [f64; 4] {
    let (hid, heads, kvh, ffn) = (256, 4, 2, 768);
    let hd = hid / heads;
    let f = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
    let norm = |x: &[f64], w: &[f32]| -> Vec<f64> {
        x.chunks(hid)
            .flat_map(|r| {
                let s = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / hid as f64 + 1e-5).sqrt();
                r.iter().zip(w).map(move |(v, g)| v * s * f64::from(*g))
            })
            .collect()
    };
    let lin = |x: &[f64], l: &qforge_verify::Linear| -> Vec<f64> {
        let w = f(&l.w);
        x.chunks(l.inp)
            .flat_map(|r| {
                w.chunks(l.inp)
                    .map(|wr| r.iter().zip(wr).map(|(a, b)| a * b).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let amax = |v: &[f64]| v.iter().fold(0f64, |m, a| m.max(a.abs()));
    let rope = |v: &mut [f64], nh: usize| {
        for (pos, row) in v.chunks_mut(nh * hd).enumerate() {
            for head in row.chunks_mut(hd) {
                for j in 0..hd / 2 {
                    let inv = 1.0 / 500_000f64.powf((2 * j) as f64 / hd as f64);
                    let (c, s) = ((pos as f64 * inv).cos(), (pos as f64 * inv).sin());
                    let (a, b) = (head[j], head[j + hd / 2]);
                    head[j] = a * c - b * s;
                    head[j + hd / 2] = b * c + a * s;
                }
            }
        }
    };
    let n1 = norm(x, &lw.attn_norm);
    let (mut q, mut k, v) = (lin(&n1, &lw.q), lin(&n1, &lw.k), lin(&n1, &lw.v));
    rope(&mut q, heads);
    rope(&mut k, kvh);
    let mut att = vec![0f64; seq * hid];
    for h in 0..heads {
        let g = h / (heads / kvh);
        for i in 0..seq {
            let qi = &q[i * hid + h * hd..][..hd];
            let sc: Vec<f64> = (0..=i)
                .map(|j| {
                    let kj = &k[j * kvh * hd + g * hd..][..hd];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = sc.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, p) in e.iter().enumerate() {
                for d in 0..hd {
                    att[i * hid + h * hd + d] += p / z * v[j * kvh * hd + g * hd + d];
                }
            }
        }
    }
    for (a, b) in x.iter_mut().zip(lin(&att, &lw.o)) {
        *a += b;
    }
    let n2 = norm(x, &lw.ffn_norm);
    let (gt, up) = (lin(&n2, &lw.gate), lin(&n2, &lw.up));
    let act: Vec<f64> = gt
        .iter()
        .zip(&up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    assert_eq!(act.len(), seq * ffn);
    for (a, b) in x.iter_mut().zip(lin(&act, &lw.down)) {
        *a += b;
    }
    [amax(&n1), amax(&att), amax(&n2), amax(&act)]
}

#[test]
fn fp8_static_f64_scales_are_the_exact_max_abs_and_resume() {
    let (dir, m, t) = small_model_and_tokens(3, 24);
    let d = dir.path();
    let args = |out: &'static str| -> Vec<String> {
        [
            "calibrate",
            p(&m),
            "--tokens",
            p(&t),
            "--method",
            "fp8-static",
            "--precision",
            "f64",
            "-o",
            p(&d.join(out)),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run_s = |a: &[String]| run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run_s(&args("a.json"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let calib: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("a.json")).unwrap()).unwrap();
    assert_eq!(calib["precision"], "f64");
    let scales = &calib["input_scales"];

    // The same statistics from the naive f64 layer above.
    let model = Model::open(&m, ForwardOptions::default()).unwrap();
    assert_eq!(model.rope_layout, qforge_verify::ops::RopeLayout::HalfSplit);
    let s = Samples::from_json_file(&t).unwrap();
    let mut h: Vec<f64> = model
        .embed(&s.flat())
        .unwrap()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    for i in 0..2u32 {
        let lw = model.layer(i).unwrap();
        let mut amax = [0f64; 4];
        for hc in h.chunks_mut(s.seq_len * 256) {
            let a = naive_f64_layer(&lw, hc, s.seq_len);
            for (m, v) in amax.iter_mut().zip(a) {
                *m = m.max(v);
            }
        }
        for (site, n) in [
            (0, "self_attn.k_proj"),
            (1, "self_attn.o_proj"),
            (2, "mlp.up_proj"),
            (3, "mlp.down_proj"),
        ] {
            // JSON holds the F32 scale's shortest decimal: parse it back to that f32
            let got = f64::from(scales[format!("model.layers.{i}.{n}")].as_f64().unwrap() as f32);
            let want = amax[site] / 448.0;
            // the f64 forward differs from the naive loops by f64 rounding only (~1e-15); the
            // scale is then rounded once to f32: within one f32 rounding (2^-24 relative)
            assert!(
                ((got - want) / want).abs() <= 6.0e-8,
                "layer {i} {n}: {got} vs {want}"
            );
        }
    }

    // Stopped after layer 0, then resumed from hidden.f64: the same bytes.
    let mut stop = args("b.json");
    stop.extend(["--stop-after-layer".to_owned(), "0".to_owned()]);
    assert!(!run_s(&stop).status.success());
    let hidden = d.join("b.json.qforge-state").join("hidden.f64");
    let good = std::fs::read(&hidden).unwrap();
    // a truncated state file is refused with its name and sizes, nothing written
    std::fs::write(&hidden, &good[..good.len() - 3]).unwrap();
    let o = run_s(&args("b.json"));
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("hidden.f64") && e.contains(&format!("expected {}", good.len())),
        "{e}"
    );
    assert!(!d.join("b.json").exists());
    std::fs::write(&hidden, &good).unwrap();
    let o = run_s(&args("b.json"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming at layer 2/2"));
    assert_eq!(
        std::fs::read(d.join("a.json")).unwrap(),
        std::fs::read(d.join("b.json")).unwrap()
    );

    // f64 is for fp8-static only.
    let o = run(&gptq_args(p(&m), p(&t), p(&d.join("g")), "1")
        .into_iter()
        .chain(["--precision", "f64"])
        .collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("fp8-static"));
}

/// `qforge calibrate m --tokens t METHOD… -o out --threads n`.
fn calib_args<'a>(
    m: &'a str,
    t: &'a str,
    method: &[&'a str],
    out: &'a str,
    threads: &'a str,
) -> Vec<&'a str> {
    let mut v = vec!["calibrate", m, "--tokens", t];
    v.extend(method);
    v.extend(["-o", out, "--threads", threads]);
    v
}

const GPTQ_G64: &[&str] = &["--method", "gptq", "--scheme", "int4-g64"];

fn gptq_args<'a>(m: &'a str, t: &'a str, out: &'a str, threads: &'a str) -> Vec<&'a str> {
    calib_args(m, t, GPTQ_G64, out, threads)
}

/// The `weight_packed` words of `module` in `ck`, with the tensor's shape.
fn packed_words(ck: &qforge_convert::Checkpoint, module: &str) -> (Vec<u64>, Vec<i32>) {
    let packed = ck
        .tensors
        .iter()
        .find(|t| t.name == format!("{module}.weight_packed"))
        .unwrap();
    let words = ck
        .bytes(packed)
        .unwrap()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (packed.shape.clone(), words)
}

#[test]
fn gptq_resumes_to_identical_bytes_and_quantize_writes_its_codes() {
    let (dir, m, t) = small_model_and_tokens(3, 24);
    let d = dir.path();
    let (a, b) = (d.join("a"), d.join("b"));
    let o = run(&gptq_args(p(&m), p(&t), p(&a), "1"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Stopped after layer 0: no output, a state directory; the rerun resumes at layer 1.
    let mut args = gptq_args(p(&m), p(&t), p(&b), "3");
    args.extend(["--stop-after-layer", "0"]);
    let o = run(&args);
    assert!(!o.status.success());
    assert!(!b.exists());
    assert!(d.join("b.qforge-state").join("state.json").exists());
    let o = run(&gptq_args(p(&m), p(&t), p(&b), "2"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming at layer 2/2"));
    assert!(!d.join("b.qforge-state").exists());
    assert_eq!(files(&a), files(&b));

    // quantize --calib DIR stores exactly the GPTQ codes and (BF16-exact) scales.
    let q = d.join("q");
    let o = run(&[
        "quantize",
        p(&m),
        p(&q),
        "--scheme",
        "int4-g64",
        "--calib",
        p(&a),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let codes = qforge_calibrate::output::GptqCodes::open(&a).unwrap();
    let ck = qforge_convert::Checkpoint::open(&q).unwrap();
    for module in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let want = codes.int4(module).unwrap().unwrap();
        let (_, got) = packed_words(&ck, module);
        assert_eq!(
            got,
            qforge_codecs::int4::pack_ct(&want.q, want.rows, want.cols).unwrap()
        );
        let st = ck
            .tensors
            .iter()
            .find(|t| t.name == format!("{module}.weight_scale"))
            .unwrap();
        assert_eq!(ck.to_f32(st).unwrap(), want.scales);
    }
    // ... and a scheme that does not match the calibration is refused.
    let o = run(&[
        "quantize",
        p(&m),
        p(&d.join("r")),
        "--scheme",
        "int4-g128",
        "--calib",
        p(&a),
    ]);
    assert!(!o.status.success());
}

fn awq_args<'a>(m: &'a str, t: &'a str, out: &'a str, threads: &'a str) -> Vec<&'a str> {
    let awq = &["--method", "awq", "--scheme", "int4-g64", "--asym"];
    calib_args(m, t, awq, out, threads)
}

/// AWQ: a run stopped after layer 0 resumes to the same bytes at any thread count, every
/// mapping's best loss is at most its round-to-nearest loss, and `quantize --calib DIR` folds
/// the scales (norm weight / s, balance columns · s) before round-to-nearest.
#[test]
fn awq_resumes_to_identical_bytes_and_quantize_folds_its_scales() {
    let (dir, m, t) = small_model_and_tokens(3, 24);
    let d = dir.path();
    let (a, b) = (d.join("a"), d.join("b"));
    let o = run(&awq_args(p(&m), p(&t), p(&a), "1"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut args = awq_args(p(&m), p(&t), p(&b), "3");
    args.extend(["--stop-after-layer", "0"]);
    assert!(!run(&args).status.success());
    assert!(!b.exists());
    let o = run(&awq_args(p(&m), p(&t), p(&b), "2"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming at layer 2/2"));
    assert_eq!(files(&a), files(&b));

    let sc = qforge_calibrate::output::AwqScales::open(&a).unwrap();
    assert!(!sc.scheme.symmetric);
    assert_eq!(sc.layers.len(), 2);
    assert!(!sc.scheme.mappings.is_empty());
    for mp in &sc.scheme.mappings {
        assert!(mp.result.best_loss <= mp.result.initial_loss, "{mp:?}");
    }

    let q = d.join("q");
    let o = run(&[
        "quantize",
        p(&m),
        p(&q),
        "--scheme",
        "int4-g64",
        "--asym",
        "--calib",
        p(&a),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let src = qforge_convert::Checkpoint::open(&m).unwrap();
    let ck = qforge_convert::Checkpoint::open(&q).unwrap();
    let get = |c: &qforge_convert::Checkpoint, n: &str| {
        let t = c.tensors.iter().find(|t| t.name == n).unwrap();
        c.to_f32(t).unwrap()
    };
    let s = sc.layers[1].attn.as_ref().unwrap();
    let n0 = get(&src, "model.layers.1.input_layernorm.weight");
    let n1 = get(&ck, "model.layers.1.input_layernorm.weight");
    for ((w0, w1), s) in n0.iter().zip(&n1).zip(s) {
        let want = (f64::from(*w0) / s) as f32;
        assert!((w1 - want).abs() <= want.abs() / 256.0, "{w1} vs {want}");
    }
    // q_proj's scales are those of round-to-nearest on the folded weight
    let mut w = get(&src, "model.layers.1.self_attn.q_proj.weight");
    let cols = n0.len();
    sc.layers[1]
        .apply(qforge_convert::LayerTensor::Q, &mut w, cols)
        .unwrap();
    let cfg = qforge_codecs::int4::Int4Config {
        bits: 4,
        scheme: qforge_codecs::int4::Int4Scheme::Asymmetric,
        group_size: Some(64),
        arith: qforge_codecs::int4::Int4Arith::Bf16,
    };
    let want = qforge_codecs::int4::quantize_int4(&w, cols, &cfg).unwrap();
    assert_eq!(
        get(&ck, "model.layers.1.self_attn.q_proj.weight_scale"),
        want.scales
    );
    // a symmetric scheme does not match an asymmetric calibration
    let o = run(&[
        "quantize",
        p(&m),
        p(&d.join("r")),
        "--scheme",
        "int4-g64",
        "--calib",
        p(&a),
    ]);
    assert!(!o.status.success());
}

/// INT8 GPTQ (W8A16): `quantize --scheme int8-g64 --calib` writes compressed-tensors
/// `pack-quantized` 8-bit words (four codes a word) holding exactly the GPTQ codes, the config
/// says `num_bits: 8`, and reading the checkpoint back dequantizes to `s·q`.
#[test]
fn gptq_int8_codes_are_written_as_8_bit_pack_quantized() {
    let (dir, m, t) = small_model_and_tokens(3, 24);
    let d = dir.path();
    let (a, q) = (d.join("a"), d.join("q"));
    let int8 = &["--method", "gptq", "--scheme", "int8-g64"];
    let o = run(&calib_args(p(&m), p(&t), int8, p(&a), "2"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[
        "quantize",
        p(&m),
        p(&q),
        "--scheme",
        "int8-g64",
        "--calib",
        p(&a),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q.join("config.json")).unwrap()).unwrap();
    let w = &cfg["quantization_config"]["config_groups"]["group_0"]["weights"];
    assert_eq!(w["num_bits"], 8);
    assert_eq!(w["group_size"], 64);
    assert_eq!(cfg["quantization_config"]["format"], "pack-quantized");

    let codes = qforge_calibrate::output::GptqCodes::open(&a).unwrap();
    assert_eq!(codes.bits(), 8);
    let ck = qforge_convert::Checkpoint::open(&q).unwrap();
    let module = "model.layers.1.mlp.down_proj";
    let want = codes.int4(module).unwrap().unwrap();
    assert!(
        want.q.iter().any(|&c| !(-8..=7).contains(&c)),
        "8-bit codes"
    );
    let (shape, got) = packed_words(&ck, module);
    assert_eq!(shape, [want.rows as u64, want.cols as u64 / 4]);
    assert_eq!(
        got,
        qforge_codecs::int4::pack_ct_bits(&want.q, want.rows, want.cols, 8).unwrap()
    );
    let id = qforge_convert::TensorId::Layer {
        index: 1,
        kind: qforge_convert::LayerTensor::Down,
    };
    assert_eq!(
        ck.weight_storage(id).unwrap(),
        qforge_quantize::dequant::WeightStorage::Quantized(qforge_quantize::layout::HfScheme::new(
            &qforge_quantize::layout::int::INT,
            qforge_quantize::layout::Params {
                bits: 8,
                group_size: Some(64),
                symmetric: true
            }
        ))
    );
    assert_eq!(ck.weight_f32(id).unwrap(), want.dequantize());
    // int8 codes cannot be written as int4
    let o = run(&[
        "quantize",
        p(&m),
        p(&d.join("r")),
        "--scheme",
        "int4-g64",
        "--calib",
        p(&a),
    ]);
    assert!(!o.status.success());
}

/// Calibration directories are input too: a tampered `calib.json` (a layer file outside the
/// directory, an unsupported bit width) or a truncated layer file is refused with an error
/// naming the file, never a panic, and nothing is written.
#[test]
fn tampered_calibration_directories_are_refused() {
    let (dir, m, t) = small_model_and_tokens(2, 16);
    let d = dir.path();
    let (gptq, awq) = (d.join("gptq"), d.join("awq"));
    assert!(run(&gptq_args(p(&m), p(&t), p(&gptq), "2"))
        .status
        .success());
    assert!(run(&awq_args(p(&m), p(&t), p(&awq), "2")).status.success());

    let copy = |src: &Path, name: &str| {
        let dst = d.join(name);
        std::fs::create_dir(&dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        dst
    };
    let edit_json = |dir: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let path = dir.join("calib.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let refused = |calib: &Path, extra: &[&str], want: &str| {
        let out = d.join("out");
        let mut args = vec!["quantize", p(&m), p(&out), "--scheme", "int4-g64"];
        args.extend(extra);
        args.extend(["--calib", p(calib)]);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{calib:?} was accepted");
        assert!(err.contains(want), "{calib:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists());
    };

    let g = copy(&gptq, "g-escape");
    edit_json(&g, &|v| {
        v["gptq"]["layer_files"][0] = "../m/config.json".into();
    });
    refused(&g, &[], "layer file name");
    let g = copy(&gptq, "g-bits");
    edit_json(&g, &|v| v["gptq"]["bits"] = 6.into());
    refused(&g, &[], "g-bits");
    let g = copy(&gptq, "g-truncated");
    let f = g.join("gptq-00000.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    refused(&g, &[], "gptq-00000.safetensors");

    let a = copy(&awq, "a-escape");
    edit_json(&a, &|v| v["awq"]["layer_files"][1] = "/etc/passwd".into());
    refused(&a, &["--asym"], "layer file name");
    let a = copy(&awq, "a-truncated");
    let f = a.join("awq-00001.safetensors");
    std::fs::write(&f, b"\x08\0\0\0\0\0\0\0{}").unwrap();
    refused(&a, &["--asym"], "awq-00001.safetensors");
    // a layer file with no scales (a valid, empty safetensors) would silently skip smoothing
    let a = copy(&awq, "a-empty");
    std::fs::write(a.join("awq-00001.safetensors"), b"\x02\0\0\0\0\0\0\0{}").unwrap();
    refused(&a, &["--asym"], "no layer file holds model.layers.1.");
}

//! qforge against llama.cpp's own ggml-cpu code (x86 AVX2 build): the integer matmul
//! ([`qforge_verify::gemm::ggml`]) against `quantize_row_q8_0/_q8_1` and `ggml_vec_dot_*_q8_*`, and
//! `--ggml-cpu-ops` ([`qforge_verify::ggml_cpu`], [`qforge_verify::ops::RopeTable::ggml`]) against
//! ggml's `rms_norm`·`mul`, `rope_ext`, `swiglu_split` and `flash_attn_ext`: every output must have
//! the same bits. Needs the harness output, so it is ignored unless run by
//! `scripts/ggml-dot-peer.sh` (which builds verify/tests/ggml_peer/{harness,ops}.c against the
//! cached llama.cpp and sets `QFORGE_GGML_PEER_DIR`).

use qforge_codecs::DType;
use qforge_verify::gemm::ggml::{matmul, quantize_q8, GgmlWeights};

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
#[ignore = "needs llama.cpp's harness output: scripts/ggml-dot-peer.sh"]
fn same_bits_as_ggml_vec_dot() {
    let dir = std::env::var("QFORGE_GGML_PEER_DIR")
        .expect("QFORGE_GGML_PEER_DIR (set by scripts/ggml-dot-peer.sh)");
    // the harness's shapes: 64 weight rows, 8 activation rows, 1536 columns
    let (o, t, k) = (64usize, 8usize, 1536usize);
    for (name, dt) in [
        ("q4_0", DType::Q4_0),
        ("q4_1", DType::Q4_1),
        ("q5_0", DType::Q5_0),
        ("q5_1", DType::Q5_1),
        ("q8_0", DType::Q8_0),
    ] {
        let read = |e: &str| std::fs::read(format!("{dir}/{name}.{e}")).unwrap();
        let (w, x, want) = (read("w"), f32s(&read("x")), f32s(&read("y")));
        assert_eq!(
            (x.len(), want.len()),
            (t * k, t * o),
            "{name}: harness output sizes"
        );
        let gw = GgmlWeights::from_blocks(dt, &w, o, k).unwrap();
        let a = quantize_q8(&x, !gw.m.is_empty());
        let mut y = vec![0f32; t * o];
        matmul(&a, t, &gw, o, k, &mut y);
        let differ = y
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        eprintln!("{name}: {differ} of {} outputs differ from ggml", y.len());
        assert_eq!(differ, 0, "{name}");
    }
}

/// Bits that differ between `got` and `want`.
fn differ(got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

#[test]
#[ignore = "needs llama.cpp's harness output: scripts/ggml-dot-peer.sh"]
fn same_bits_as_ggml_ops() {
    use qforge_verify::ggml_cpu;
    use qforge_verify::ops::KeyMask;
    let dir = std::env::var("QFORGE_GGML_PEER_DIR")
        .expect("QFORGE_GGML_PEER_DIR (set by scripts/ggml-dot-peer.sh)");
    // verify/tests/ggml_peer/ops.c's shapes
    let (t, h, kvh, hd, e, f) = (200usize, 9usize, 3usize, 64usize, 576usize, 1536usize);
    let inp = f32s(&std::fs::read(format!("{dir}/ops.in")).unwrap());
    let out = f32s(&std::fs::read(format!("{dir}/ops.out")).unwrap());
    let mut at = 0;
    let mut take = |v: &[f32], n: usize| {
        let s = v[at..at + n].to_vec();
        at += n;
        s
    };
    let (x, w, q, k, v, g, u) = (
        take(&inp, t * e),
        take(&inp, e),
        take(&inp, t * h * hd),
        take(&inp, t * kvh * hd),
        take(&inp, t * kvh * hd),
        take(&inp, t * f),
        take(&inp, t * f),
    );
    assert_eq!(at, inp.len(), "ops.in size");
    let (mut o, want_norm) = (0usize, |o: &mut usize, n: usize| {
        let s = out[*o..*o + n].to_vec();
        *o += n;
        s
    });
    let (w_norm, w_rope, w_glu, w_fa) = (
        want_norm(&mut o, t * e),
        want_norm(&mut o, t * h * hd),
        want_norm(&mut o, t * f),
        want_norm(&mut o, t * h * hd),
    );

    let mut y = x.clone();
    ggml_cpu::rms_norm(&mut y, e, &w, 1e-5);
    let n_norm = differ(&y, &w_norm);
    // the harness's rope positions are 300..500: rotate a buffer with 300 leading rows
    let mut r = vec![0f32; 300 * h * hd];
    r.extend_from_slice(&q);
    qforge_verify::ops::RopeTable::ggml(100_000.0, hd, None, 500).apply(
        &mut r,
        h,
        qforge_verify::ops::RopeLayout::Interleaved,
    );
    let n_rope = differ(&r[300 * h * hd..], &w_rope);
    let mut gl = g.clone();
    ggml_cpu::swiglu(&mut gl, &u);
    let n_glu = differ(&gl, &w_glu);
    let mut fa = vec![0f32; t * h * hd];
    ggml_cpu::flash_attn_ext(&q, &k, &v, t, h, kvh, hd, 0.125, KeyMask::Causal, &mut fa);
    let n_fa = differ(&fa, &w_fa);
    eprintln!(
        "rms_norm·mul {n_norm} of {}, rope {n_rope} of {}, swiglu {n_glu} of {}, flash_attn_ext {n_fa} of {} outputs differ from ggml",
        y.len(),
        w_rope.len(),
        gl.len(),
        fa.len()
    );
    assert_eq!((n_norm, n_rope, n_glu, n_fa), (0, 0, 0, 0));
}

//! qforge's ggml integer matmul ([`qforge_verify::gemm::ggml`]) against llama.cpp's own
//! `quantize_row_q8_0/_q8_1` and `ggml_vec_dot_*_q8_*` (x86 AVX2 build): every output must have
//! the same bits. Needs the harness output, so it is ignored unless run by
//! `scripts/ggml-dot-peer.sh` (which builds verify/tests/ggml_peer/harness.c against the cached
//! llama.cpp and sets `QFORGE_GGML_PEER_DIR`).

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

//! The rotary Q/K row permutation between Meta/GGUF and Hugging Face layouts
//! (specs/meta.md §3.2, specs/gguf.md §4).
//!
//! Meta and llama.cpp rotate adjacent pairs `(2j, 2j+1)` of each head; transformers rotates the
//! halves `(j, j + hd/2)`. Converting is a pure permutation of whole rows (output features) of
//! `wq` (per query head) and `wk` (per key/value head): with `half = hd/2`, head `h`, `j < half`,
//! `s ∈ {0, 1}`, `HF[h·hd + s·half + j] = Meta[h·hd + 2j + s]`. Since quantization blocks and
//! per-row scales never cross rows, the permutation applies to stored bytes of any dtype.

/// Direction of the permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Meta / GGUF → HF (`convert_llama_weights_to_hf.py`'s `permute`).
    ToHf,
    /// HF → Meta / GGUF (`convert_hf_to_gguf.py`'s `LlamaModel.permute`).
    FromHf,
}

/// Source row for destination row `dst` of a tensor with `heads` heads of `hd` rows each.
pub fn source_row(dst: usize, hd: usize, dir: RopeLayout) -> usize {
    let half = hd / 2;
    let (h, r) = (dst / hd, dst % hd);
    match dir {
        // HF row r = s·half + j comes from Meta row 2j + s.
        RopeLayout::ToHf => h * hd + 2 * (r % half) + r / half,
        // Meta row r = 2j + s comes from HF row s·half + j.
        RopeLayout::FromHf => h * hd + (r % 2) * half + r / 2,
    }
}

/// Permute the rows of `src` (row-major, `row_bytes` bytes per row, `heads · hd` rows) into a
/// new buffer.
///
/// # Panics
/// If `src.len() != heads · hd · row_bytes` or `hd` is odd (callers validate shapes first).
pub fn permute_rows(
    src: &[u8],
    heads: usize,
    hd: usize,
    row_bytes: usize,
    dir: RopeLayout,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    permute_rows_into(src, heads, hd, row_bytes, dir, &mut out);
    out
}

/// [`permute_rows`], appending to `out`.
///
/// # Panics
/// As [`permute_rows`].
pub fn permute_rows_into(
    src: &[u8],
    heads: usize,
    hd: usize,
    row_bytes: usize,
    dir: RopeLayout,
    out: &mut Vec<u8>,
) {
    assert!(
        hd % 2 == 0 && src.len() == heads * hd * row_bytes,
        "rope permutation shape"
    );
    out.reserve(src.len());
    for dst in 0..heads * hd {
        let s = source_row(dst, hd, dir);
        out.extend_from_slice(&src[s * row_bytes..(s + 1) * row_bytes]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_numpy_reshape_swapaxes_definition() {
        // numpy: w.reshape(n, hd/2, 2, D).swapaxes(1, 2).reshape(n*hd, D) (Meta -> HF)
        let (n, hd) = (3usize, 8usize);
        let meta: Vec<u8> = (0..(n * hd) as u8).collect();
        let hf = permute_rows(&meta, n, hd, 1, RopeLayout::ToHf);
        let mut want = Vec::new();
        for h in 0..n {
            for s in 0..2 {
                for j in 0..hd / 2 {
                    want.push(meta[h * hd + 2 * j + s]);
                }
            }
        }
        assert_eq!(hf, want);
        assert_eq!(permute_rows(&hf, n, hd, 1, RopeLayout::FromHf), meta);
    }

    #[test]
    fn permutes_whole_rows() {
        let rows: Vec<u8> = (0..4u8).flat_map(|r| [r; 3]).collect();
        let p = permute_rows(&rows, 1, 4, 3, RopeLayout::ToHf);
        assert_eq!(p, vec![0, 0, 0, 2, 2, 2, 1, 1, 1, 3, 3, 3]);
    }
}

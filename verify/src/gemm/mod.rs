//! Single-precision GEMM for the f32 forward: packed panels and an `MR × NR` register-tile
//! microkernel chosen at run time (AVX-512F, AVX2+FMA, or portable `mul_add`), in the BLIS
//! loop order (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
//! Functionality", 2015: `pc` over k-blocks, `jr` over `NR`-panels of B, `ir` over `MR`-panels
//! of A).
//!
//! **Bit-identical whatever the ISA, the blocking or the thread count.** Every output element
//! is one chain of fused multiply-adds over `p = 0, 1, …, k−1` in order, starting from `+0`:
//! `c ← fma(a[i,p], b[p,j], c)`. A k-block boundary stores the partial sum to `C` as `f32` and
//! the next block reloads it, which changes nothing; the kernels differ only in how many
//! independent chains they run side by side (the `MR × NR` tile), never in the order inside a
//! chain. So AVX-512, AVX2 and the scalar kernel (`f32::mul_add`, a correctly rounded fma on
//! every platform) give the same bits, and so does any split of the output among threads. The
//! cost of this rule is one accumulator per output element (no split of k into parallel
//! partial sums), which is what a register-tiled kernel does anyway.

pub mod fp8;
pub mod ggml;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use rayon::prelude::*;

/// Columns of k per block: one `kc × NR` B micro-panel stays in L1 while the `MR`-panels of
/// A stream past it.
const KC: usize = 256;
/// Rows of A per parallel task (a multiple of every kernel's `MR`).
const MC: usize = 96;
/// Columns of B per parallel task (a multiple of every kernel's `NR`).
const NC: usize = 512;
/// Most `f32`s of packed B held at once by [`matmul_t`] (8 MiB): the LM head's weight is
/// packed in slices of this size, so the temporary never grows with the vocabulary.
const PACK_B_MAX: usize = 2 << 20;

/// The instruction set a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// `f32::mul_add`, 4 × 8 tile.
    Scalar,
    /// AVX2 + FMA, 6 × 16 tile (two 8-lane accumulators per row).
    Avx2,
    /// AVX-512F, 12 × 32 tile (two 16-lane accumulators per row).
    Avx512,
}

/// `c[i·rsc + j] (i < MR, j < NR) ← fma chain over p < kc of a[p·MR + i]·b[p·NR + j]`,
/// starting from the current `c` when `load`, else from `+0`.
type Kernel = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, bool);

impl Isa {
    /// Rows of the register tile.
    pub fn mr(self) -> usize {
        match self {
            Isa::Scalar => 4,
            Isa::Avx2 => 6,
            Isa::Avx512 => 12,
        }
    }

    /// Columns of the register tile.
    pub fn nr(self) -> usize {
        match self {
            Isa::Scalar => 8,
            Isa::Avx2 => 16,
            Isa::Avx512 => 32,
        }
    }

    /// Name as `QFORGE_GEMM_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The widest available kernel, or the one `QFORGE_GEMM_ISA` names (`scalar`, `avx2`,
    /// `avx512`) when this CPU has it; read once per process.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let widest = [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|i| i.available())
                .unwrap_or(Isa::Scalar);
            match std::env::var("QFORGE_GEMM_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") if Isa::Avx2.available() => Isa::Avx2,
                Some("avx512") if Isa::Avx512.available() => Isa::Avx512,
                _ => widest,
            }
        })
    }

    fn kernel(self) -> Kernel {
        assert!(
            self.available(),
            "{} kernel on a CPU without it",
            self.name()
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::kernel_avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::kernel_avx512,
            _ => kernel_scalar,
        }
    }
}

/// The portable kernel (4 × 8).
///
/// # Safety
/// `a` holds `kc·4` and `b` `kc·8` floats; `c` addresses a 4 × 8 tile with row stride `rsc`.
#[allow(unsafe_code)]
unsafe fn kernel_scalar(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    load: bool,
) {
    const MR: usize = 4;
    const NR: usize = 8;
    // SAFETY: the caller's contract above.
    unsafe {
        let mut acc = [[0f32; NR]; MR];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = *c.add(i * rsc + j);
                }
            }
        }
        let a = std::slice::from_raw_parts(a, kc * MR);
        let b = std::slice::from_raw_parts(b, kc * NR);
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
                for (v, &bj) in row.iter_mut().zip(bp) {
                    *v = ai.mul_add(bj, *v);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                *c.add(i * rsc + j) = *v;
            }
        }
    }
}

/// A read-only strided matrix: element `(r, c)` at `ptr[r·rs + c·cs]`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}
// SAFETY: only read, by tasks that all outlive no borrow of the caller's slices.
#[allow(unsafe_code)]
unsafe impl Send for View {}
#[allow(unsafe_code)]
unsafe impl Sync for View {}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of one buffer that outlives them.
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Values of k packed per pass over a panel's rows: the panel's `PB × MR` (or `× NR`)
/// destination block stays in L1 while each source row is read contiguously.
const PB: usize = 64;

/// Pack `lines` strided lines into one panel `[p][width]`: line `l < lines` is element
/// `p` at `src(l)[p·step]`; lines `lines..width` are zero.
#[allow(unsafe_code)]
unsafe fn pack_panel(
    src: impl Fn(usize) -> *const f32,
    step: usize,
    lines: usize,
    k: usize,
    width: usize,
    panel: &mut [f32],
) {
    for p0 in (0..k).step_by(PB) {
        let pe = PB.min(k - p0);
        for l in 0..width {
            let dst = panel[p0 * width + l..].iter_mut().step_by(width).take(pe);
            if l < lines {
                let s = src(l);
                if step == 1 {
                    // SAFETY: the caller's line holds k values.
                    let row = unsafe { std::slice::from_raw_parts(s.add(p0), pe) };
                    for (d, v) in dst.zip(row) {
                        *d = *v;
                    }
                } else {
                    for (p, d) in dst.enumerate() {
                        // SAFETY: as above, with stride `step`.
                        *d = unsafe { *s.add((p0 + p) * step) };
                    }
                }
            } else {
                dst.for_each(|d| *d = 0.0);
            }
        }
    }
}

/// Pack rows `r0..r0+rows` of `a` (`[·, k]`) into `MR`-row panels, `[panel][p][MR]`, zero rows
/// past `rows`.
#[allow(unsafe_code)]
unsafe fn pack_a(a: View, r0: usize, rows: usize, k: usize, mr: usize, dst: &mut [f32]) {
    for (pi, panel) in dst.chunks_exact_mut(k * mr).enumerate() {
        let i0 = pi * mr;
        let lines = mr.min(rows.saturating_sub(i0));
        // SAFETY: rows r0+i0+l < the caller's m, p < k.
        unsafe {
            pack_panel(
                |l| a.ptr.add((r0 + i0 + l) * a.rs),
                a.cs,
                lines,
                k,
                mr,
                panel,
            );
        };
    }
}

/// Pack columns `c0..c0+cols` of `b` (`[k, ·]`) into one `NR`-column panel, `[p][NR]`, zero
/// columns past `cols`.
#[allow(unsafe_code)]
unsafe fn pack_b_panel(b: View, c0: usize, cols: usize, k: usize, nr: usize, panel: &mut [f32]) {
    // SAFETY: columns c0+l < the caller's n, p < k.
    unsafe {
        pack_panel(
            |l| b.ptr.add((c0 + l) * b.cs),
            b.rs,
            cols.min(nr),
            k,
            nr,
            panel,
        );
    };
}

/// A scratch buffer of at least `len` floats (contents unspecified), kept per thread between
/// calls so packing does not fault in fresh zeroed pages every time. Taken out of the slot
/// while in use, so a nested call (rayon runs other tasks while a thread waits) gets its own.
fn with_scratch<R>(
    slot: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = slot.with(std::cell::Cell::take);
    if buf.len() < len {
        buf = vec![0f32; len];
    }
    let r = f(&mut buf[..len]);
    slot.with(|s| s.set(buf));
    r
}

thread_local! {
    static SCRATCH_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static SCRATCH_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `C[rows, cols]` (at `c`, row stride `rsc`) from packed A (`rows` padded to `MR`) and packed
/// B (`cols` padded to `NR`), both over the full `k`.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn macro_tile(
    isa: Isa,
    kernel: Kernel,
    k: usize,
    pa: &[f32],
    rows: usize,
    pb: &[f32],
    cols: usize,
    c: *mut f32,
    rsc: usize,
) {
    let (mr, nr) = (isa.mr(), isa.nr());
    let mut edge = [0f32; 12 * 32];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let load = pc > 0;
        for (jp, bpan) in pb.chunks_exact(k * nr).enumerate() {
            let j0 = jp * nr;
            let ncols = nr.min(cols - j0);
            let bp = bpan[pc * nr..].as_ptr();
            for (ip, apan) in pa.chunks_exact(k * mr).enumerate() {
                let i0 = ip * mr;
                let nrows = mr.min(rows - i0);
                let ap = apan[pc * mr..].as_ptr();
                // SAFETY: the tile (i0.., j0..) lies inside C when full; otherwise the kernel
                // writes the local `edge` tile and only the valid part is copied.
                unsafe {
                    let ct = c.add(i0 * rsc + j0);
                    if nrows == mr && ncols == nr {
                        kernel(kc, ap, bp, ct, rsc, load);
                    } else {
                        if load {
                            for i in 0..nrows {
                                for j in 0..ncols {
                                    edge[i * nr + j] = *ct.add(i * rsc + j);
                                }
                            }
                        }
                        kernel(kc, ap, bp, edge.as_mut_ptr(), nr, load);
                        for i in 0..nrows {
                            for j in 0..ncols {
                                *ct.add(i * rsc + j) = edge[i * nr + j];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `C[m, n] = A[m, k] · B[k, n]` on the calling thread, with element strides (`C` column
/// stride 1), in kernel `isa`. Bits do not depend on `isa` (see the module doc).
///
/// # Safety
/// The pointers and strides must address valid memory for the given shapes, and `C` must not
/// overlap `A` or `B`.
#[allow(unsafe_code, clippy::too_many_arguments)]
pub unsafe fn sgemm_serial(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    rsb: usize,
    csb: usize,
    c: *mut f32,
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of C, n elements.
            unsafe { std::slice::from_raw_parts_mut(c.add(i * rsc), n).fill(0.0) };
        }
        return;
    }
    let kernel = isa.kernel();
    let (mr, nr) = (isa.mr(), isa.nr());
    let av = View {
        ptr: a,
        rs: rsa,
        cs: csa,
    };
    let bv = View {
        ptr: b,
        rs: rsb,
        cs: csb,
    };
    with_scratch(&SCRATCH_B, n.div_ceil(nr) * nr * k, |pb| {
        for (jp, panel) in pb.chunks_exact_mut(k * nr).enumerate() {
            // SAFETY: forwarded from the caller's contract.
            unsafe { pack_b_panel(bv, jp * nr, n - jp * nr, k, nr, panel) };
        }
        with_scratch(&SCRATCH_A, MC.min(m).div_ceil(mr) * mr * k, |pa| {
            for r0 in (0..m).step_by(MC) {
                let rows = MC.min(m - r0);
                let pa = &mut pa[..rows.div_ceil(mr) * mr * k];
                // SAFETY: forwarded from the caller's contract.
                unsafe {
                    pack_a(av, r0, rows, k, mr, pa);
                    macro_tile(isa, kernel, k, pa, rows, pb, n, c.add(r0 * rsc), rsc);
                }
            }
        });
    });
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (row-major, contiguous), overwriting `y`, in parallel on
/// rayon's pool with the detected kernel ([`Isa::detect`]).
///
/// # Panics
/// If a slice is shorter than its shape says (a caller bug).
pub fn matmul_t(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    matmul_t_isa(Isa::detect(), x, m, k, w, n, y);
}

/// [`matmul_t`] in a given kernel (tests and benchmarks compare kernels with it).
///
/// # Panics
/// If a slice is shorter than its shape says, or `isa` is not available on this CPU.
pub fn matmul_t_isa(isa: Isa, x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "matmul shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    let y = &mut y[..m * n];
    if k == 0 {
        y.fill(0.0);
        return;
    }
    let kernel = isa.kernel();
    let (mr, nr) = (isa.mr(), isa.nr());
    let av = View {
        ptr: x.as_ptr(),
        rs: k,
        cs: 1,
    };
    let bv = View {
        ptr: w.as_ptr(),
        rs: 1,
        cs: k,
    };
    let yp = OutPtr(y.as_mut_ptr());
    let mp = m.div_ceil(mr) * mr;
    with_scratch(&SCRATCH_A, mp * k, |pa| {
        // All of x packed once, in parallel over MR-row panels.
        pa.par_chunks_mut(k * mr)
            .enumerate()
            .for_each(|(ip, panel)| {
                // SAFETY: rows ip·mr.. of `x` are in bounds by the assertion (the rest zero).
                #[allow(unsafe_code)]
                unsafe {
                    pack_a(av, ip * mr, m - ip * mr, k, mr, panel);
                }
            });
        let pa = &*pa;
        // Slices of W (whole NC blocks) packed at once, bounded by PACK_B_MAX floats.
        let slice_cols = ((PACK_B_MAX / k).max(NC) / NC * NC).min(n.div_ceil(nr) * nr);
        with_scratch(&SCRATCH_B, slice_cols * k, |pb| {
            for s0 in (0..n).step_by(slice_cols) {
                let scols = slice_cols.min(n - s0);
                let pb = &mut pb[..scols.div_ceil(nr) * nr * k];
                pb.par_chunks_mut(k * nr)
                    .enumerate()
                    .for_each(|(jp, panel)| {
                        let c0 = s0 + jp * nr;
                        // SAFETY: columns c0.. of Wᵀ are rows of `w`, in bounds by the assertion.
                        #[allow(unsafe_code)]
                        unsafe {
                            pack_b_panel(bv, c0, n - c0, k, nr, panel);
                        }
                    });
                let pb = &*pb;
                let (mt, nt) = (m.div_ceil(MC), scols.div_ceil(NC));
                (0..mt * nt).into_par_iter().for_each(|task| {
                    let (ti, tj) = (task / nt, task % nt);
                    let (r0, c0) = (ti * MC, tj * NC);
                    let (rows, cols) = (MC.min(m - r0), NC.min(scols - c0));
                    let pat = &pa[r0 * k..(r0 + rows.div_ceil(mr) * mr) * k];
                    let pbt = &pb[c0 * k..(c0 + cols.div_ceil(nr) * nr) * k];
                    // SAFETY: this task alone writes the tile rows r0.., columns s0+c0.. of `y`.
                    #[allow(unsafe_code)]
                    unsafe {
                        let ct = yp.get().add(r0 * n + s0 + c0);
                        macro_tile(isa, kernel, k, pat, rows, pbt, cols, ct, n);
                    }
                });
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// The definition: one `mul_add` chain per element, p in order.
    fn chain(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut c = 0f32;
                for p in 0..k {
                    c = x[i * k + p].mul_add(w[j * k + p], c);
                }
                y[i * n + j] = c;
            }
        }
        y
    }

    #[test]
    fn scalar_kernel_is_the_fma_chain_bit_for_bit() {
        // k across a KC boundary, ragged m and n tiles
        for &(m, k, n) in &[(7usize, 300usize, 13usize), (1, 1, 1), (13, 5, 9)] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let mut y = vec![f32::NAN; m * n];
            matmul_t_isa(Isa::Scalar, &x, m, k, &w, n, &mut y);
            let want = chain(&x, m, k, &w, n);
            assert!(
                y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{m}x{k}x{n}"
            );
        }
    }

    #[test]
    fn serial_strided_equals_parallel() {
        let (m, k, n) = (37, 70, 45);
        let x = data(m * k, 3);
        let w = data(n * k, 4);
        let mut y = vec![0f32; m * n];
        matmul_t(&x, m, k, &w, n, &mut y);
        let mut z = vec![f32::NAN; m * n];
        // SAFETY: shapes as allocated; B(p, j) = w[j·k + p].
        #[allow(unsafe_code)]
        unsafe {
            sgemm_serial(
                Isa::detect(),
                m,
                k,
                n,
                x.as_ptr(),
                k,
                1,
                w.as_ptr(),
                1,
                k,
                z.as_mut_ptr(),
                n,
            );
        }
        assert_eq!(y, z);
    }
}

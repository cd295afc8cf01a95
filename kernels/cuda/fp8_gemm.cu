// FP8 E4M3 x E4M3 -> BF16 (or F32) GEMM with row-wise scales, on tensor cores (sm_89+).
//
//   y[m, n] = (sum_k f8(a[m, k]) * f8(w[n, k])) * sa[m] * sw[n]
//
// a: [M, K] e4m3 bytes, row-major (K-major); w: [N, K] e4m3 bytes, row-major (K-major: the "TN"
// layout of fbgemm's f8f8bf16_rowwise); sa: f32[M]; sw: f32[N]; y: [M, N] row-major, BF16 bits
// (out_f32 == 0) or f32 (out_f32 != 0).
//
// Requirements checked by the host (kernels/src/cuda/mod.rs): K % 16 == 0 (16-byte cp.async chunks
// are either wholly inside K or wholly outside), a and w 16-byte aligned (cudarc allocations are).
// M and N are arbitrary: rows outside the matrix and the K tail of the last tile are zero-filled
// through cp.async's src-size operand, and the epilogue checks both bounds.
//
// Design: a CTA computes a BM x BN tile; its warps form a WARPS_M x WARPS_N grid, each warp a
// (BM/WARPS_M) x (BN/WARPS_N) sub-tile of m16n8 accumulators. K advances in BK = 64 byte steps
// through a STAGES-deep cp.async.cg ring in dynamic shared memory; each smem row is padded from
// 64 to 80 bytes so that ldmatrix (8 rows x 16 bytes per phase) and cp.async stores are free of
// bank conflicts (80-byte stride: the 8 rows start in banks 0, 20, 8, 28, 16, 4, 24, 12).
//
// Fragments: mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 (PTX ISA "Matrix fragments for
// mma.m16n8k32", 8-bit types): with g = lane / 4 and t = lane % 4,
//   A (16 x 32, 4 x b32): a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..]
//   B (32 x 8,  2 x b32): b0 = B[4t..4t+3][g],  b1 = B[16+4t..][g]       (B[k][n] = w[n][k])
//   C/D (16 x 8, 4 x f32): c0, c1 = D[g][2t], D[g][2t+1]; c2, c3 = D[g+8][2t], D[g+8][2t+1]
// In bytes this is exactly the m16n8k16 16-bit layout, so ldmatrix.x4 (b16, non-transposed) on the
// byte tiles yields the fragments: for A the four 8x8(b16) matrices are (rows 0-7, bytes 0-15),
// (rows 8-15, bytes 0-15), (rows 0-7, bytes 16-31), (rows 8-15, bytes 16-31) -> a0..a3; for B two
// n8 tiles at once: (n 0-7, bytes 0-15), (n 0-7, bytes 16-31), (n 8-15, 0-15), (n 8-15, 16-31)
// -> b0, b1 of tile 0, b0, b1 of tile 1. ldmatrix lane l supplies the address of row l % 8 of
// matrix l / 8 and receives, from matrix j, row l / 4 bytes 4(l % 4)..+3 into register j.
//
// Accumulation: the two k32 MMAs of one BK = 64 step accumulate into a zeroed register tile that
// is then added to the main f32 accumulator on the CUDA cores ("promotion", as DeepSeek-V3 does
// every 128 K), so a reduced-precision tensor-core accumulator never sums more than 64 products.
// Scales are applied once in the epilogue: y = (acc * sa[m]) * sw[n], rounded once to BF16 (RNE).
//
// Header-free on purpose (no cuda_fp8.h / cuda_bf16.h): NVRTC then needs no include path.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define BK 64
#define SMEM_LD 80

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma_e4m3(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u16 f32_to_bf16_rn(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(x));
    return r;
}

// Copy one BK-wide K slice of `rows` rows starting at global row `row0` into smem (row stride
// SMEM_LD). Chunk c covers row c / 4, bytes 16 (c % 4) .. +15 of the slice.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(u8* smem, const u8* __restrict__ g, int row0, int nrows,
                                          int k0, int K, int tid) {
#pragma unroll
    for (int c = tid; c < ROWS * (BK / 16); c += THREADS) {
        const int r = c >> 2;
        const int kc = k0 + ((c & 3) << 4);
        const int gr = row0 + r;
        const bool valid = gr < nrows && kc < K;
        // An out-of-range chunk reads 0 bytes (zero fill); its address must still be a valid
        // global address, so point it at the matrix start.
        const u8* src = valid ? g + (size_t)gr * (size_t)K + kc : g;
        cp_async_16(smem_addr(smem + r * SMEM_LD + ((c & 3) << 4)), src, valid ? 16 : 0);
    }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
__device__ __forceinline__ void fp8_gemm_impl(const u8* __restrict__ a, const u8* __restrict__ w,
                                              const float* __restrict__ sa,
                                              const float* __restrict__ sw, void* __restrict__ out,
                                              int M, int N, int K, int out_f32) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M;
    constexpr int WN = BN / WARPS_N;
    constexpr int MT = WM / 16;  // m16 tiles per warp
    constexpr int NT = WN / 8;   // n8 tiles per warp
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16 x 16");
    constexpr int STAGE_BYTES = (BM + BN) * SMEM_LD;

    extern __shared__ __align__(128) u8 smem[];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm0 = (warp / WARPS_N) * WM;
    const int wn0 = (warp % WARPS_N) * WN;
    const int bm0 = blockIdx.y * BM;
    const int bn0 = blockIdx.x * BN;
    const int ktiles = (K + BK - 1) / BK;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // Prologue: fill STAGES - 1 slots. Every iteration commits a group (possibly empty) so the
    // wait_group count below stays exact.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) {
            u8* st = smem + s * STAGE_BYTES;
            load_tile<BM, THREADS>(st, a, bm0, M, s * BK, K, tid);
            load_tile<BN, THREADS>(st + BM * SMEM_LD, w, bn0, N, s * BK, K, tid);
        }
        cp_async_commit();
    }

    // ldmatrix row addresses (byte offsets inside a stage) for this lane.
    const int lrow = lane & 7;
    const int lmat = lane >> 3;
    // A: matrix j -> rows (j & 1) * 8, bytes (j >> 1) * 16.
    const int a_off = (wm0 + (lmat & 1) * 8 + lrow) * SMEM_LD + (lmat >> 1) * 16;
    // B: matrix j -> n rows (j >> 1) * 8, bytes (j & 1) * 16.
    const int b_off = BM * SMEM_LD + (wn0 + (lmat >> 1) * 8 + lrow) * SMEM_LD + (lmat & 1) * 16;

    for (int kt = 0; kt < ktiles; ++kt) {
        // Groups committed so far: STAGES - 1 + kt; tile kt is group kt.
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile kt visible to all; slot (kt - 1) % STAGES no longer read

        const int pf = kt + STAGES - 1;
        if (pf < ktiles) {
            u8* st = smem + (pf % STAGES) * STAGE_BYTES;
            load_tile<BM, THREADS>(st, a, bm0, M, pf * BK, K, tid);
            load_tile<BN, THREADS>(st + BM * SMEM_LD, w, bn0, N, pf * BK, K, tid);
        }
        cp_async_commit();

        const u32 st = smem_addr(smem + (kt % STAGES) * STAGE_BYTES);
        float part[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) part[i][j][e] = 0.f;

#pragma unroll
        for (int kk = 0; kk < BK; kk += 32) {
            u32 af[MT][4];
            u32 bf[NT / 2][4];
#pragma unroll
            for (int i = 0; i < MT; ++i) ldmatrix_x4(af[i], st + a_off + i * 16 * SMEM_LD + kk);
#pragma unroll
            for (int j = 0; j < NT / 2; ++j) ldmatrix_x4(bf[j], st + b_off + j * 16 * SMEM_LD + kk);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
                    mma_e4m3(part[i][j], af[i], bf[j >> 1][(j & 1) * 2], bf[j >> 1][(j & 1) * 2 + 1]);
        }
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] += part[i][j][e];
    }
    cp_async_wait<0>();

    // Epilogue: scales, rounding, bounds.
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = bm0 + wm0 + i * 16 + g + h * 8;
            if (row >= M) continue;
            const float s_row = sa[row];
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int col = bn0 + wn0 + j * 8 + 2 * t;
                if (col >= N) continue;
                const float y0 = acc[i][j][2 * h] * s_row * sw[col];
                const bool has1 = col + 1 < N;
                const float y1 = has1 ? acc[i][j][2 * h + 1] * s_row * sw[col + 1] : 0.f;
                const size_t idx = (size_t)row * (size_t)N + col;
                if (out_f32) {
                    float* y = (float*)out;
                    y[idx] = y0;
                    if (has1) y[idx + 1] = y1;
                } else {
                    u16* y = (u16*)out;
                    if (has1 && (N & 1) == 0) {
                        // idx is even (col and N even): a 4-byte aligned bf16 pair.
                        const u32 pair = (u32)f32_to_bf16_rn(y0) | ((u32)f32_to_bf16_rn(y1) << 16);
                        *(u32*)(y + idx) = pair;
                    } else {
                        y[idx] = f32_to_bf16_rn(y0);
                        if (has1) y[idx + 1] = f32_to_bf16_rn(y1);
                    }
                }
            }
        }
    }
}

// Large M (prefill): 128 x 128 tile, 8 warps as 2 x 4 (warp tile 64 x 32), 4 stages (80 KiB smem).
extern "C" __global__ void __launch_bounds__(256)
fp8_gemm_bm128_bn128(const u8* __restrict__ a, const u8* __restrict__ w, const float* __restrict__ sa,
                     const float* __restrict__ sw, void* __restrict__ out, int M, int N, int K, int out_f32) {
    fp8_gemm_impl<128, 128, 2, 4, 4>(a, w, sa, sw, out, M, N, K, out_f32);
}

// Medium M: 64 x 128 tile, 8 warps as 2 x 4 (warp tile 32 x 32), 4 stages (60 KiB smem).
extern "C" __global__ void __launch_bounds__(256)
fp8_gemm_bm64_bn128(const u8* __restrict__ a, const u8* __restrict__ w, const float* __restrict__ sa,
                    const float* __restrict__ sw, void* __restrict__ out, int M, int N, int K, int out_f32) {
    fp8_gemm_impl<64, 128, 2, 4, 4>(a, w, sa, sw, out, M, N, K, out_f32);
}

// Decode (M <= 16): 16 x 64 tile, 4 warps as 1 x 4 (warp tile 16 x 16), 4 stages (25 KiB smem),
// so that N / 64 CTAs stream the weight matrix.
extern "C" __global__ void __launch_bounds__(128)
fp8_gemm_bm16_bn64(const u8* __restrict__ a, const u8* __restrict__ w, const float* __restrict__ sa,
                   const float* __restrict__ sw, void* __restrict__ out, int M, int N, int K, int out_f32) {
    fp8_gemm_impl<16, 64, 1, 4, 4>(a, w, sa, sw, out, M, N, K, out_f32);
}

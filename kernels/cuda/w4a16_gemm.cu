// W4A16 GEMM for decode-sized M (1..16): BF16 activations x INT4 weights in compressed-tensors
// `pack-quantized` form (symmetric), BF16 group scales, BF16 or f32 output.
//
//   y[m, n] = sum_g s[n, g] * sum_{k in group g} x[m, k] * (u[n, k] - 8)
//
// x: [M, K] BF16 bits row-major; wq: [N, K/8] i32, nibble i (bits 4i..4i+3) of word w of row n
// holds u = q + 8 for k = 8w + i (compressed-tensors pack_to_int32, low nibble first);
// ws: [N, K/G] BF16 bits; y: [M, N] row-major (BF16 bits or f32).
// Host-checked requirements: K % 8 == 0, G % 8 == 0, K % G == 0, M <= MT, x 16-byte aligned
// (cudarc allocations are; rows are 16-byte multiples because K % 8 == 0).
//
// Design (memory-bound streaming of the weights): each warp owns ROWS = 4 consecutive output
// columns n and walks K with its 32 lanes on consecutive packed words (lane l takes words
// l, l + 32, ...), so every weight load of the warp is one coalesced 128-byte line per row. A word
// covers 8 consecutive k of one group (G % 8 == 0), so the lane accumulates the integer-weighted
// sum of x over the word and multiplies by the group scale once: acc += s * sum_j x_j * (u_j - 8).
// The activations (at most 16 x K BF16, L1/L2-resident) are read with 16-byte __ldg loads, one per
// (word, m), shared by the ROWS weight rows. After the K loop the partial sums are reduced across
// the warp with shuffles. With MT FMAs per weight on CUDA cores this is bandwidth-bound for small
// M and becomes FMA-bound around M = 4..8 on H100 (a tensor-core path, e.g. Marlin-style
// m16n8k16 dequant-in-registers, is the next step for M = 16).
//
// Header-free, so NVRTC needs no include path.

typedef unsigned short u16;
typedef unsigned int u32;

#define W4_WARPS 4
#define W4_ROWS 4

__device__ __forceinline__ u16 f32_to_bf16_rn(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(x));
    return r;
}

template <int MT>
__device__ __forceinline__ void w4a16_impl(const u16* __restrict__ x, const int* __restrict__ wq,
                                           const u16* __restrict__ ws, void* __restrict__ out, int M,
                                           int N, int K, int G, int out_f32) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n0 = (blockIdx.x * W4_WARPS + warp) * W4_ROWS;
    if (n0 >= N) return;  // uniform per warp; no block-level sync below
    const int words = K >> 3;
    const int groups = K / G;

    float acc[W4_ROWS][MT];
#pragma unroll
    for (int r = 0; r < W4_ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

    for (int w = lane; w < words; w += 32) {
        const int k0 = w << 3;
        const int g = k0 / G;
        u32 word[W4_ROWS];
        float s[W4_ROWS];
#pragma unroll
        for (int r = 0; r < W4_ROWS; ++r) {
            const int n = n0 + r;
            const bool ok = n < N;
            word[r] = ok ? (u32)__ldg(wq + (size_t)n * (size_t)words + w) : 0x88888888u;  // u = 8: q = 0
            s[r] = ok ? __uint_as_float(((u32)__ldg(ws + (size_t)n * (size_t)groups + g)) << 16) : 0.f;
        }
        float qf[W4_ROWS][8];
#pragma unroll
        for (int r = 0; r < W4_ROWS; ++r)
#pragma unroll
            for (int j = 0; j < 8; ++j) qf[r][j] = (float)((int)((word[r] >> (4 * j)) & 0xFu) - 8);

#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < M) {
                const uint4 v = __ldg((const uint4*)(x + (size_t)m * (size_t)K + k0));
                const u32 xw[4] = {v.x, v.y, v.z, v.w};
                float xf[8];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    xf[2 * j] = __uint_as_float(xw[j] << 16);
                    xf[2 * j + 1] = __uint_as_float(xw[j] & 0xFFFF0000u);
                }
#pragma unroll
                for (int r = 0; r < W4_ROWS; ++r) {
                    float p = 0.f;
#pragma unroll
                    for (int j = 0; j < 8; ++j) p = fmaf(xf[j], qf[r][j], p);
                    acc[r][m] = fmaf(p, s[r], acc[r][m]);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < W4_ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);

    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < W4_ROWS; ++r) {
            const int n = n0 + r;
            if (n >= N) continue;
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m >= M) continue;
                const size_t idx = (size_t)m * (size_t)N + n;
                if (out_f32) {
                    ((float*)out)[idx] = acc[r][m];
                } else {
                    ((u16*)out)[idx] = f32_to_bf16_rn(acc[r][m]);
                }
            }
        }
    }
}

// One instantiation per activation-row capacity MT; the host picks the smallest MT >= M.
extern "C" __global__ void __launch_bounds__(W4_WARPS * 32)
w4a16_gemm_m1(const u16* __restrict__ x, const int* __restrict__ wq, const u16* __restrict__ ws,
               void* __restrict__ out, int M, int N, int K, int G, int out_f32) {
    w4a16_impl<1>(x, wq, ws, out, M, N, K, G, out_f32);
}

extern "C" __global__ void __launch_bounds__(W4_WARPS * 32)
w4a16_gemm_m2(const u16* __restrict__ x, const int* __restrict__ wq, const u16* __restrict__ ws,
               void* __restrict__ out, int M, int N, int K, int G, int out_f32) {
    w4a16_impl<2>(x, wq, ws, out, M, N, K, G, out_f32);
}

extern "C" __global__ void __launch_bounds__(W4_WARPS * 32)
w4a16_gemm_m4(const u16* __restrict__ x, const int* __restrict__ wq, const u16* __restrict__ ws,
               void* __restrict__ out, int M, int N, int K, int G, int out_f32) {
    w4a16_impl<4>(x, wq, ws, out, M, N, K, G, out_f32);
}

extern "C" __global__ void __launch_bounds__(W4_WARPS * 32)
w4a16_gemm_m8(const u16* __restrict__ x, const int* __restrict__ wq, const u16* __restrict__ ws,
               void* __restrict__ out, int M, int N, int K, int G, int out_f32) {
    w4a16_impl<8>(x, wq, ws, out, M, N, K, G, out_f32);
}

extern "C" __global__ void __launch_bounds__(W4_WARPS * 32)
w4a16_gemm_m16(const u16* __restrict__ x, const int* __restrict__ wq, const u16* __restrict__ ws,
               void* __restrict__ out, int M, int N, int K, int G, int out_f32) {
    w4a16_impl<16>(x, wq, ws, out, M, N, K, G, out_f32);
}

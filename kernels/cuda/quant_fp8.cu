// Per-token (row-wise) FP8 E4M3 quantization of BF16 activations (sm_89+), FBGEMM
// `quantize_fp8_per_row` semantics, bit-identical to qforge_codecs::fp8::quantize_fp8_rowwise
// applied to the same values decoded to f32:
//
//   amax_t = max_k |x[t, k]|
//   s_t    = max(min(amax_t, ub) / 448, min_scale)      (ub <= 0: no upper bound)
//   q[t,k] = e4m3_satfinite_rne(x[t, k] / s_t)          (true IEEE f32 division), 0x80 -> 0x00
//
// x: [M, K] BF16 bits, row-major; q: [M, K] bytes; scale: f32[M] (dequantization scales,
// x ~ f8(q) * s); min_scale = 1 / (448 * 512), passed by the host so that both sides use the same
// f32 constant. One CTA of 256 threads per row: pass 1 reduces amax (16-byte loads when K % 8 == 0
// and scalar loads otherwise), pass 2 re-reads the row (now in L1/L2) and converts two values per
// cvt.rn.satfinite.e4m3x2.f32 (PTX ISA: the first source lands in the upper byte). Negative zero
// (0x80) is written as 0x00, like the CPU path (ROCm's fnuz FP8 reads 0x80 as NaN).
//
// Non-finite input: the CPU path rejects it with an error; here fmaxf ignores NaN in the amax and
// the value itself quantizes to NaN (0x7F/0xFF), +-inf saturates to +-448. The host documents this.
//
// Header-free (no cuda_fp8.h / cuda_bf16.h), so NVRTC needs no include path.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define QTHREADS 256

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Two f32 -> two e4m3 bytes (lo in byte 0, hi in byte 1), RNE, saturating to +-448.
__device__ __forceinline__ u16 e4m3x2(float lo, float hi) {
    u16 r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
    // 0x80 (negative zero) -> 0x00 in either byte.
    if ((r & 0x00FF) == 0x0080) r &= 0xFF00;
    if ((r & 0xFF00) == 0x8000) r &= 0x00FF;
    return r;
}

__device__ __forceinline__ float block_max(float v, float* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < QTHREADS / 32 ? red[lane] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

extern "C" __global__ void __launch_bounds__(QTHREADS)
quantize_fp8_rows(const u16* __restrict__ x, u8* __restrict__ q, float* __restrict__ scale, int M,
                  int K, float ub, float min_scale) {
    __shared__ float red[QTHREADS / 32];
    const int row = blockIdx.x;
    if (row >= M) return;  // uniform per CTA
    const u16* xr = x + (size_t)row * (size_t)K;
    u8* qr = q + (size_t)row * (size_t)K;
    const bool vec = (K & 7) == 0;

    float amax = 0.f;
    if (vec) {
        const uint4* xv = (const uint4*)xr;
        for (int i = threadIdx.x; i < (K >> 3); i += QTHREADS) {
            const uint4 v = __ldg(xv + i);
            const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                amax = fmaxf(amax, fabsf(__uint_as_float(w[j] << 16)));
                amax = fmaxf(amax, fabsf(__uint_as_float(w[j] & 0xFFFF0000u)));
            }
        }
    } else {
        for (int i = threadIdx.x; i < K; i += QTHREADS) amax = fmaxf(amax, fabsf(bf16_to_f32(xr[i])));
    }
    amax = block_max(amax, red);

    const float b = ub > 0.f ? fminf(amax, ub) : amax;
    const float s = fmaxf(b / 448.0f, min_scale);
    if (threadIdx.x == 0) scale[row] = s;

    if (vec) {
        const uint4* xv = (const uint4*)xr;
        uint2* qv = (uint2*)qr;
        for (int i = threadIdx.x; i < (K >> 3); i += QTHREADS) {
            const uint4 v = __ldg(xv + i);
            const u32 w[4] = {v.x, v.y, v.z, v.w};
            u32 packed[2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const u16 p0 = e4m3x2(__uint_as_float(w[2 * j] << 16) / s,
                                      __uint_as_float(w[2 * j] & 0xFFFF0000u) / s);
                const u16 p1 = e4m3x2(__uint_as_float(w[2 * j + 1] << 16) / s,
                                      __uint_as_float(w[2 * j + 1] & 0xFFFF0000u) / s);
                packed[j] = (u32)p0 | ((u32)p1 << 16);
            }
            qv[i] = make_uint2(packed[0], packed[1]);
        }
    } else {
        for (int i = threadIdx.x; i < K; i += QTHREADS) {
            qr[i] = (u8)(e4m3x2(bf16_to_f32(xr[i]) / s, 0.f) & 0xFF);
        }
    }
}

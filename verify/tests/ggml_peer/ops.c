// Peer check for verify/src/ggml_cpu.rs: llama.cpp's own ggml-cpu ops (rms_norm + mul, rope_ext
// NORM mode, swiglu_split, flash_attn_ext on an F16 K/V) on random inputs, through the ggml graph
// API on the CPU, written as <dir>/ops.{in,out} (f32, the layouts below) for
// verify/tests/ggml_peer.rs. Built and run by scripts/ggml-dot-peer.sh.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"
#include "ggml-cpu.h"
static uint64_t st = 7;
static float rnd(void) {
  st = st * 6364136223846793005ULL + 1442695040888963407ULL;
  return ((float)(uint32_t)(st >> 40) / 16777216.0f - 0.5f) * 4.0f;
}
// shapes (SmolLM2-135M's attention and FFN widths)
enum { T = 200, H = 9, KVH = 3, HD = 64, E = 576, F = 1536 };
static void put(FILE * f, const float * x, size_t n) { fwrite(x, 4, n, f); }
int main(int argc, char ** argv) {
  if (argc != 2) { fprintf(stderr, "usage: ops <dir>\n"); return 2; }
  struct ggml_init_params ip = { 512u << 20, NULL, false };
  struct ggml_context * ctx = ggml_init(ip);
  // inputs, row-major [rows, width] as qforge holds them
  static float x[T * E], w[E], qr[T * H * HD], kr[T * KVH * HD], vr[T * KVH * HD], g[T * F], u[T * F];
  for (int i = 0; i < T * E; i++) x[i] = rnd();
  for (int i = 0; i < E; i++) w[i] = rnd();
  for (int i = 0; i < T * H * HD; i++) qr[i] = rnd();
  for (int i = 0; i < T * KVH * HD; i++) kr[i] = ggml_fp16_to_fp32(ggml_fp32_to_fp16(rnd()));
  for (int i = 0; i < T * KVH * HD; i++) vr[i] = ggml_fp16_to_fp32(ggml_fp32_to_fp16(rnd()));
  for (int i = 0; i < T * F; i++) { g[i] = 3.0f * rnd(); u[i] = rnd(); }

  struct ggml_tensor * tx = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, E, T); memcpy(tx->data, x, sizeof x);
  struct ggml_tensor * tw = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, E); memcpy(tw->data, w, sizeof w);
  struct ggml_tensor * norm = ggml_mul(ctx, ggml_rms_norm(ctx, tx, 1e-5f), tw);

  struct ggml_tensor * tq = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, HD, H, T); memcpy(tq->data, qr, sizeof qr);
  struct ggml_tensor * pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, T);
  for (int i = 0; i < T; i++) ((int32_t *) pos->data)[i] = 300 + i;  // positions 300..499
  struct ggml_tensor * rope = ggml_rope_ext(ctx, tq, pos, NULL, HD, 0, 8192, 100000.0f, 1.0f, 0.0f, 1.0f, 32.0f, 1.0f);

  struct ggml_tensor * tg = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, F, T); memcpy(tg->data, g, sizeof g);
  struct ggml_tensor * tu = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, F, T); memcpy(tu->data, u, sizeof u);
  struct ggml_tensor * glu = ggml_swiglu_split(ctx, tg, tu);

  // flash attention: q [HD, T, H], k/v [HD, T, KVH] F16, mask [T, T] F16 causal
  struct ggml_tensor * fq = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, HD, T, H);
  struct ggml_tensor * fk = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, HD, T, KVH);
  struct ggml_tensor * fv = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, HD, T, KVH);
  struct ggml_tensor * fm = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, T, T);
  for (int i = 0; i < T; i++)
    for (int h = 0; h < H; h++)
      for (int d = 0; d < HD; d++) ((float *) fq->data)[(h * T + i) * HD + d] = qr[(i * H + h) * HD + d];
  for (int i = 0; i < T; i++)
    for (int h = 0; h < KVH; h++)
      for (int d = 0; d < HD; d++) {
        ((ggml_fp16_t *) fk->data)[(h * T + i) * HD + d] = ggml_fp32_to_fp16(kr[(i * KVH + h) * HD + d]);
        ((ggml_fp16_t *) fv->data)[(h * T + i) * HD + d] = ggml_fp32_to_fp16(vr[(i * KVH + h) * HD + d]);
      }
  for (int i = 0; i < T; i++)
    for (int j = 0; j < T; j++) ((ggml_fp16_t *) fm->data)[i * T + j] = ggml_fp32_to_fp16(j <= i ? 0.0f : -INFINITY);
  struct ggml_tensor * fa = ggml_flash_attn_ext(ctx, fq, fk, fv, fm, 0.125f, 0.0f, 0.0f);

  struct ggml_cgraph * gf = ggml_new_graph(ctx);
  ggml_build_forward_expand(gf, norm);
  ggml_build_forward_expand(gf, rope);
  ggml_build_forward_expand(gf, glu);
  ggml_build_forward_expand(gf, fa);
  if (ggml_graph_compute_with_ctx(ctx, gf, 2) != GGML_STATUS_SUCCESS) { fprintf(stderr, "compute failed\n"); return 1; }

  char p[512];
  snprintf(p, sizeof p, "%s/ops.in", argv[1]); FILE * f = fopen(p, "wb");
  put(f, x, T * E); put(f, w, E); put(f, qr, T * H * HD); put(f, kr, T * KVH * HD); put(f, vr, T * KVH * HD); put(f, g, T * F); put(f, u, T * F);
  fclose(f);
  snprintf(p, sizeof p, "%s/ops.out", argv[1]); f = fopen(p, "wb");
  put(f, norm->data, T * E); put(f, rope->data, T * H * HD); put(f, glu->data, T * F); put(f, fa->data, T * H * HD);
  fclose(f);
  ggml_free(ctx);
  return 0;
}

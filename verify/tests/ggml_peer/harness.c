// Peer check for verify/src/gemm/ggml.rs: llama.cpp's own ggml-cpu quantize_row_q8_0/_q8_1
// and ggml_vec_dot_{q4_0,q4_1,q5_0,q5_1,q8_0}_q8_{0,1} (ggml-cpu/arch/x86/quants.c) on random
// weights and activations, written as <dir>/<type>.{w,x,y} (GGUF blocks, f32 rows, f32 results)
// for verify/tests/ggml_peer.rs. Built and run by scripts/ggml-dot-peer.sh.
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
void ggml_cpu_init(void);
void quantize_row_q8_1(const float * x, void * vy, int64_t k);
void quantize_row_q8_0(const float * x, void * vy, int64_t k);
void ggml_vec_dot_q4_1_q8_1(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q8_0_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q4_0_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q5_0_q8_0(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q5_1_q8_1(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
static uint64_t st = 42;
static uint32_t rnd(void) { st = st * 6364136223846793005ULL + 1442695040888963407ULL; return (uint32_t)(st >> 33); }
static uint16_t h(float f) { _Float16 v = (_Float16)f; uint16_t b; memcpy(&b, &v, 2); return b; }
int main(int argc, char ** argv) {
  ggml_cpu_init();
  if (argc != 3) { fprintf(stderr, "usage: harness <q4_0|q4_1|q5_0|q5_1|q8_0> <dir>\n"); return 2; }
  const char * ty = argv[1];
  const char * dir = argv[2];
  int O = 64, T = 8, K = 1536;
  int bb = !strcmp(ty, "q4_0") ? 18 : !strcmp(ty, "q4_1") ? 20 : !strcmp(ty, "q5_0") ? 22 : !strcmp(ty, "q5_1") ? 24 : !strcmp(ty, "q8_0") ? 34 : 0;
  if (!bb) { fprintf(stderr, "unknown type %s\n", ty); return 2; }
  int has_m = bb == 20 || bb == 24;
  int q8_1 = has_m;
  int nb = K / 32;
  uint8_t * w = malloc((size_t)O * nb * bb);
  for (int i = 0; i < O * nb; i++) {
    uint8_t * b = w + (size_t)i * bb;
    for (int j = 0; j < bb; j++) b[j] = rnd();
    uint16_t d = h((rnd() % 1000) / 50000.0f + 1e-3f); memcpy(b, &d, 2);
    if (has_m) { uint16_t m = h(-((float)(rnd() % 1000)) / 20000.0f); memcpy(b + 2, &m, 2); }
  }
  float * x = malloc(sizeof(float) * T * K);
  for (int i = 0; i < T * K; i++) { float u = (rnd() % 20001) / 10000.0f - 1.0f; x[i] = u * u * u * 3.0f; }
  int ab = q8_1 ? 36 : 34;
  uint8_t * a = malloc((size_t)T * nb * ab);
  float * y = malloc(sizeof(float) * T * O);
  for (int t = 0; t < T; t++) {
    if (q8_1) quantize_row_q8_1(x + t * K, a + (size_t)t * nb * ab, K); else quantize_row_q8_0(x + t * K, a + (size_t)t * nb * ab, K);
    for (int o = 0; o < O; o++) {
      const void * wr = w + (size_t)o * nb * bb; const void * ar = a + (size_t)t * nb * ab;
      float * r = &y[t * O + o];
      switch (bb) {
        case 18: ggml_vec_dot_q4_0_q8_0(K, r, 0, wr, 0, ar, 0, 1); break;
        case 20: ggml_vec_dot_q4_1_q8_1(K, r, 0, wr, 0, ar, 0, 1); break;
        case 22: ggml_vec_dot_q5_0_q8_0(K, r, 0, wr, 0, ar, 0, 1); break;
        case 24: ggml_vec_dot_q5_1_q8_1(K, r, 0, wr, 0, ar, 0, 1); break;
        default: ggml_vec_dot_q8_0_q8_0(K, r, 0, wr, 0, ar, 0, 1);
      }
    }
  }
  char p[256];
  snprintf(p, sizeof p, "%s/%s.w", dir, ty); FILE * f = fopen(p, "wb"); fwrite(w, 1, (size_t)O * nb * bb, f); fclose(f);
  snprintf(p, sizeof p, "%s/%s.x", dir, ty); f = fopen(p, "wb"); fwrite(x, 4, (size_t)T * K, f); fclose(f);
  snprintf(p, sizeof p, "%s/%s.y", dir, ty); f = fopen(p, "wb"); fwrite(y, 4, (size_t)T * O, f); fclose(f);
  return 0;
}

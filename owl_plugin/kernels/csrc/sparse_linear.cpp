// owl-plugin sparse CPU kernels: y[b, r] = sum_c x[b, c] * W[r, c] over the packed bitmask layout
// (owl_plugin/kernels/pack.py): masks int32 [out, nblk] (32 columns per word), values (non-zeros,
// row-major, PAD zeros at the end), row_offsets int64 [out + 1].
//
// Paths, chosen at run time by the caller (isa argument): 4 = AVX-512 + VBMI2 + BF16 (vpexpandw,
// vdpbf16ps), 3 = AVX-512 + VBMI2 without BF16 (vpexpandw, then the even/odd bf16 halves widened to fp32 by a
// shift and a mask: Ice Lake-class Xeons), 2 = AVX-512F (vexpandps on 16-lane halves), 1 = AVX2 (256-entry
// vpshufb table for bf16, vpermps table for fp32), 0 = portable C++ (cpu_features says which the CPU has). Each
// SIMD function carries its own target attribute, so one binary runs on an AVX2-only CPU as long as the caller
// never asks for a path the CPU lacks.
//
// x arrives padded to nblk*32 columns (zeros), so every 32-wide x load is in bounds.
// Rows are walked R at a time (independent popcount->pointer chains), NB batch rows per pass; each row's
// values are prefetched PREFETCH_BYTES ahead (the hardware prefetcher alone left 25-40% on the table).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr int BLOCK = 32;
constexpr int R = 4;    // rows in flight
constexpr int NBMAX = 4;  // batch rows per pass
constexpr int NBMAX_DP = 8;  // ... on the VBMI2+BF16 path: 2 rows x 8 batch rows = 16 zmm accumulators, so
                             // each expanded weight block feeds 8 dot products (batch 5-8 in one pass)
// software prefetch distance in each row's values (measured, 70% bf16: 1 KB +0-25%, 4-16 KB +25-40% at batch 1-8)
constexpr int PREFETCH_BYTES = 8192;

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---------------------------------------------------------------- portable
template <typename T>
inline float load_f(const T* p) { return static_cast<float>(*p); }
template <>
inline float load_f<uint16_t>(const uint16_t* p) { return bf16_to_f32(*p); }

// T = float (fp32 weights) or uint16_t (bf16 weights); x is fp32 padded [B, xs]
template <typename T>
void rows_portable(const uint32_t* masks, int64_t nblk, const T* vals, const int64_t* offs,
                   int64_t r0, int64_t r1, const float* x, int64_t xs, int64_t B, float* y, int64_t ys) {
  for (int64_t r = r0; r < r1; ++r) {
    float acc[16] = {0};
    const T* p = vals + offs[r];
    const uint32_t* m = masks + r * nblk;
    for (int64_t k = 0; k < nblk; ++k) {
      uint32_t mk = m[k];
      while (mk) {
        int j = __builtin_ctz(mk);
        float w = load_f(p++);
        const float* xc = x + k * BLOCK + j;
        for (int64_t b = 0; b < B; ++b) acc[b] += w * xc[b * xs];
        mk &= mk - 1;
      }
    }
    for (int64_t b = 0; b < B; ++b) y[b * ys + r] = acc[b];
  }
}

// ---------------------------------------------------------------- AVX2
struct Avx2Lut {
  alignas(32) int32_t idx[256][8];
  alignas(32) int32_t keep[256][8];
  Avx2Lut() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int j = 0; j < 8; ++j) {
        if (m & (1 << j)) { idx[m][j] = n++; keep[m][j] = -1; }
        else { idx[m][j] = 0; keep[m][j] = 0; }
      }
    }
  }
};
const Avx2Lut& avx2_lut() { static Avx2Lut lut; return lut; }

// sum of the 8 lanes
__attribute__((target("avx2,fma"))) inline float avx2_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <typename T>
__attribute__((target("avx2,fma"))) inline __m256 avx2_load8(const T* p);
template <>
__attribute__((target("avx2,fma"))) inline __m256 avx2_load8<float>(const float* p) { return _mm256_loadu_ps(p); }

template <typename T, int NR, int NB>
__attribute__((target("avx2,fma"))) void group_avx2(const uint32_t* masks, int64_t nblk, const T* vals,
                                                    const int64_t* offs, int64_t r0, const float* x, int64_t xs,
                                                    float* y, int64_t ys) {
  const Avx2Lut& lut = avx2_lut();
  __m256 acc[NB][NR];
  const T* p[NR];
  const uint32_t* m[NR];
  for (int r = 0; r < NR; ++r) {
    p[r] = vals + offs[r0 + r];
    m[r] = masks + (r0 + r) * nblk;
    for (int b = 0; b < NB; ++b) acc[b][r] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < nblk; ++k) {
    for (int q = 0; q < 4; ++q) {
      __m256 xv[NB];
      for (int b = 0; b < NB; ++b) xv[b] = _mm256_loadu_ps(x + b * xs + k * BLOCK + q * 8);
      for (int r = 0; r < NR; ++r) {
        if (q == 0) _mm_prefetch(reinterpret_cast<const char*>(p[r]) + PREFETCH_BYTES, _MM_HINT_T0);
        uint32_t mb = (m[r][k] >> (8 * q)) & 0xff;
        __m256 v = avx2_load8<T>(p[r]);
        __m256 w = _mm256_permutevar8x32_ps(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.idx[mb])));
        w = _mm256_and_ps(w, _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lut.keep[mb]))));
        p[r] += __builtin_popcount(mb);
        for (int b = 0; b < NB; ++b) acc[b][r] = _mm256_fmadd_ps(w, xv[b], acc[b][r]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < NR; ++r) y[b * ys + r0 + r] = avx2_sum(acc[b][r]);
}

// bf16 weights on AVX2: one vpshufb per 8 weights expands *and* widens them. The 8 stored values
// (16 bytes, broadcast to both 128-bit lanes) are shuffled so that weight j's two bytes land in the
// high half of fp32 lane j and zeros everywhere else (control byte 0x80), i.e. the fp32 value of the
// bf16 weight, or 0 where the mask bit is clear. 256 masks x 32 bytes = 8 KB of table.
struct Avx2Bf16Lut {
  alignas(32) uint8_t ctl[256][32];
  Avx2Bf16Lut() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int j = 0; j < 8; ++j) {
        uint8_t* c = ctl[m] + 4 * j;
        c[0] = c[1] = 0x80;
        if (m & (1 << j)) { c[2] = static_cast<uint8_t>(2 * n); c[3] = static_cast<uint8_t>(2 * n + 1); ++n; }
        else { c[2] = c[3] = 0x80; }
      }
    }
  }
};
const Avx2Bf16Lut& avx2_bf16_lut() { static Avx2Bf16Lut lut; return lut; }

template <int NR, int NB>
__attribute__((target("avx2,fma"))) void group_avx2_bf16(const uint32_t* masks, int64_t nblk, const uint16_t* vals,
                                                         const int64_t* offs, int64_t r0, const float* x, int64_t xs,
                                                         float* y, int64_t ys) {
  const Avx2Bf16Lut& lut = avx2_bf16_lut();
  __m256 acc[NB][NR];
  const uint16_t* p[NR];
  const uint32_t* m[NR];
  for (int r = 0; r < NR; ++r) {
    p[r] = vals + offs[r0 + r];
    m[r] = masks + (r0 + r) * nblk;
    for (int b = 0; b < NB; ++b) acc[b][r] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < nblk; ++k) {
    for (int r = 0; r < NR; ++r) {
      const uint32_t mk = m[r][k];
      const uint16_t* pr = p[r];
      _mm_prefetch(reinterpret_cast<const char*>(pr) + PREFETCH_BYTES, _MM_HINT_T0);
      // start of each 8-column quarter: independent popcounts, one pointer step per block
      const int start[4] = {0, __builtin_popcount(mk & 0xffu), __builtin_popcount(mk & 0xffffu),
                            __builtin_popcount(mk & 0xffffffu)};
      p[r] = pr + __builtin_popcount(mk);
      for (int q = 0; q < 4; ++q) {
        const __m256i src = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pr + start[q])));
        const __m256i ctl = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.ctl[(mk >> (8 * q)) & 0xffu]));
        const __m256 w = _mm256_castsi256_ps(_mm256_shuffle_epi8(src, ctl));
        for (int b = 0; b < NB; ++b)
          acc[b][r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + b * xs + k * BLOCK + q * 8), acc[b][r]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < NR; ++r) y[b * ys + r0 + r] = avx2_sum(acc[b][r]);
}

// ---------------------------------------------------------------- AVX-512F (16-lane expand of fp32)
template <typename T>
__attribute__((target("avx512f"))) inline __m512 avx512_load16(const T* p);
template <>
__attribute__((target("avx512f"))) inline __m512 avx512_load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <>
__attribute__((target("avx512f"))) inline __m512 avx512_load16<uint16_t>(const uint16_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <typename T, int NR, int NB>
__attribute__((target("avx512f"))) void group_avx512(const uint32_t* masks, int64_t nblk, const T* vals,
                                                     const int64_t* offs, int64_t r0, const float* x, int64_t xs,
                                                     float* y, int64_t ys) {
  __m512 acc[NB][NR];
  const T* p[NR];
  const uint32_t* m[NR];
  for (int r = 0; r < NR; ++r) {
    p[r] = vals + offs[r0 + r];
    m[r] = masks + (r0 + r) * nblk;
    for (int b = 0; b < NB; ++b) acc[b][r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < nblk; ++k) {
    __m512 xl[NB], xh[NB];
    for (int b = 0; b < NB; ++b) {
      xl[b] = _mm512_loadu_ps(x + b * xs + k * BLOCK);
      xh[b] = _mm512_loadu_ps(x + b * xs + k * BLOCK + 16);
    }
    for (int r = 0; r < NR; ++r) {
      uint32_t mk = m[r][k];
      _mm_prefetch(reinterpret_cast<const char*>(p[r]) + PREFETCH_BYTES, _MM_HINT_T0);
      __mmask16 lo = static_cast<__mmask16>(mk & 0xffff), hi = static_cast<__mmask16>(mk >> 16);
      __m512 wl = _mm512_maskz_expand_ps(lo, avx512_load16<T>(p[r]));
      p[r] += __builtin_popcount(lo);
      __m512 wh = _mm512_maskz_expand_ps(hi, avx512_load16<T>(p[r]));
      p[r] += __builtin_popcount(hi);
      for (int b = 0; b < NB; ++b) {
        acc[b][r] = _mm512_fmadd_ps(wl, xl[b], acc[b][r]);
        acc[b][r] = _mm512_fmadd_ps(wh, xh[b], acc[b][r]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < NR; ++r) y[b * ys + r0 + r] = _mm512_reduce_add_ps(acc[b][r]);
}

// ---------------------------------------------------------------- AVX-512 VBMI2 + BF16 (bf16 weights, bf16 x)
template <int NR, int NB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx512bf16"))) void group_bf16dp(
    const uint32_t* masks, int64_t nblk, const uint16_t* vals, const int64_t* offs, int64_t r0, const uint16_t* x,
    int64_t xs, float* y, int64_t ys) {
  __m512 acc[NB][NR];
  const uint16_t* p[NR];
  const uint32_t* m[NR];
  for (int r = 0; r < NR; ++r) {
    p[r] = vals + offs[r0 + r];
    m[r] = masks + (r0 + r) * nblk;
    for (int b = 0; b < NB; ++b) acc[b][r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < nblk; ++k) {
    __m512i xv[NB];
    for (int b = 0; b < NB; ++b) xv[b] = _mm512_loadu_si512(x + b * xs + k * BLOCK);
    for (int r = 0; r < NR; ++r) {
      uint32_t mk = m[r][k];
      _mm_prefetch(reinterpret_cast<const char*>(p[r]) + PREFETCH_BYTES, _MM_HINT_T0);
      __m512i w = _mm512_maskz_expand_epi16(static_cast<__mmask32>(mk), _mm512_loadu_si512(p[r]));
      p[r] += __builtin_popcount(mk);
      for (int b = 0; b < NB; ++b) acc[b][r] = _mm512_dpbf16_ps(acc[b][r], (__m512bh)w, (__m512bh)xv[b]);
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < NR; ++r) y[b * ys + r0 + r] = _mm512_reduce_add_ps(acc[b][r]);
}

// ---------------------------------------------------------------- AVX-512 VBMI2 without BF16 (bf16 weights, fp32 x)
// One vpexpandw places a 32-column block's bf16 weights; lane i of the 16 dwords then holds columns 2i (low half)
// and 2i+1 (high half), widened to fp32 by `<< 16` and `& 0xffff0000`. x arrives de-interleaved per block (16
// even columns, then 16 odd, fp32: x_even_odd), so each block costs one load, one expand, two integer ops and
// two FMAs per batch row, where the AVX-512F path needs two widening loads and two vexpandps. Products of two
// bf16 values are exact in fp32. With one or two batch rows the even and odd products go to separate
// accumulators (two FMA chains per row of W instead of one long one).
template <int NR, int NB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2"))) void group_vbmi2(
    const uint32_t* masks, int64_t nblk, const uint16_t* vals, const int64_t* offs, int64_t r0, const float* x,
    int64_t xs, float* y, int64_t ys) {
  constexpr bool split = NB <= 2;
  __m512 acc[NB][NR], acc_odd[split ? NB : 1][NR];
  const uint16_t* p[NR];
  const uint32_t* m[NR];
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int r = 0; r < NR; ++r) {
    p[r] = vals + offs[r0 + r];
    m[r] = masks + (r0 + r) * nblk;
    for (int b = 0; b < NB; ++b) acc[b][r] = _mm512_setzero_ps();
    for (int b = 0; b < (split ? NB : 1); ++b) acc_odd[b][r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < nblk; ++k) {
    __m512 xe[NB], xo[NB];
    for (int b = 0; b < NB; ++b) {
      xe[b] = _mm512_loadu_ps(x + b * xs + k * BLOCK);
      xo[b] = _mm512_loadu_ps(x + b * xs + k * BLOCK + 16);
    }
    for (int r = 0; r < NR; ++r) {
      uint32_t mk = m[r][k];
      _mm_prefetch(reinterpret_cast<const char*>(p[r]) + PREFETCH_BYTES, _MM_HINT_T0);
      __m512i w = _mm512_maskz_expand_epi16(static_cast<__mmask32>(mk), _mm512_loadu_si512(p[r]));
      p[r] += __builtin_popcount(mk);
      __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(w, high));
      for (int b = 0; b < NB; ++b) {
        acc[b][r] = _mm512_fmadd_ps(we, xe[b], acc[b][r]);
        if constexpr (split) acc_odd[b][r] = _mm512_fmadd_ps(wo, xo[b], acc_odd[b][r]);
        else acc[b][r] = _mm512_fmadd_ps(wo, xo[b], acc[b][r]);
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < NR; ++r) {
      __m512 sum = acc[b][r];
      if constexpr (split) sum = _mm512_add_ps(sum, acc_odd[b][r]);
      y[b * ys + r0 + r] = _mm512_reduce_add_ps(sum);
    }
}

// ---------------------------------------------------------------- drivers
// calls G<NR, NB>(...) for a group of NR rows and a batch chunk of NB rows (runtime NB -> template)
#define OWL_DISPATCH_NB(NB_RT, FN, NR, ...) \
  switch (NB_RT) {                          \
    case 1: FN<NR, 1>(__VA_ARGS__); break;  \
    case 2: FN<NR, 2>(__VA_ARGS__); break;  \
    case 3: FN<NR, 3>(__VA_ARGS__); break;  \
    default: FN<NR, 4>(__VA_ARGS__); break; \
  }
#define OWL_DISPATCH_NB8(NB_RT, FN, NR, ...) \
  switch (NB_RT) {                           \
    case 1: FN<NR, 1>(__VA_ARGS__); break;   \
    case 2: FN<NR, 2>(__VA_ARGS__); break;   \
    case 3: FN<NR, 3>(__VA_ARGS__); break;   \
    case 4: FN<NR, 4>(__VA_ARGS__); break;   \
    case 5: FN<NR, 5>(__VA_ARGS__); break;   \
    case 6: FN<NR, 6>(__VA_ARGS__); break;   \
    case 7: FN<NR, 7>(__VA_ARGS__); break;   \
    default: FN<NR, 8>(__VA_ARGS__); break;  \
  }

template <int NR, int NB> void g512_f(const uint32_t* a, int64_t b, const float* c, const int64_t* d, int64_t e,
                                      const float* f, int64_t g, float* h, int64_t i) {
  group_avx512<float, NR, NB>(a, b, c, d, e, f, g, h, i);
}
template <int NR, int NB> void g512_h(const uint32_t* a, int64_t b, const uint16_t* c, const int64_t* d, int64_t e,
                                      const float* f, int64_t g, float* h, int64_t i) {
  group_avx512<uint16_t, NR, NB>(a, b, c, d, e, f, g, h, i);
}
template <int NR, int NB> void gvb_h(const uint32_t* a, int64_t b, const uint16_t* c, const int64_t* d, int64_t e,
                                     const float* f, int64_t g, float* h, int64_t i) {
  group_vbmi2<NR, NB>(a, b, c, d, e, f, g, h, i);
}
template <int NR, int NB> void g2_f(const uint32_t* a, int64_t b, const float* c, const int64_t* d, int64_t e,
                                    const float* f, int64_t g, float* h, int64_t i) {
  group_avx2<float, NR, NB>(a, b, c, d, e, f, g, h, i);
}
template <int NR, int NB> void g2_h(const uint32_t* a, int64_t b, const uint16_t* c, const int64_t* d, int64_t e,
                                    const float* f, int64_t g, float* h, int64_t i) {
  group_avx2_bf16<NR, NB>(a, b, c, d, e, f, g, h, i);
}

}  // namespace

// raises unless this CPU has what path `isa` (0 portable .. 4 avx512_bf16, resolve_isa's numbers) executes: the raw
// ops take the path from their caller, and a path the CPU lacks would die of SIGILL, not raise
void check_isa(int64_t isa);

// shapes, dtypes and padding of x and the packed tensors (also used by sparse_gemm_pairs.cpp)
void check_inputs(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& values,
                  const at::Tensor& row_offsets, int64_t out_f, int64_t in_f) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in_f && x.is_contiguous(), "x must be contiguous [B, in_features]");
  TORCH_CHECK(masks.scalar_type() == at::kInt && masks.dim() == 2 && masks.size(0) == out_f &&
                  masks.size(1) == (in_f + BLOCK - 1) / BLOCK && masks.is_contiguous(),
              "masks must be contiguous int32 [out, ceil(in/32)]");
  TORCH_CHECK(row_offsets.scalar_type() == at::kLong && row_offsets.numel() == out_f + 1 &&
                  row_offsets.is_contiguous(), "row_offsets must be contiguous int64 [out+1]");
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous(), "values must be contiguous 1-D");
  TORCH_CHECK(values.numel() >= row_offsets[out_f].item<int64_t>() + BLOCK, "values must hold nnz + 32 padding");
  TORCH_CHECK(x.scalar_type() == values.scalar_type(), "x and values must share a dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "dtype must be float32 or bfloat16");
}

// y [B, out] (x's dtype) = x [B, in] @ W^T
at::Tensor sparse_gemm(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& values,
                       const at::Tensor& row_offsets, int64_t out_f, int64_t in_f, int64_t isa) {
  check_inputs(x, masks, values, row_offsets, out_f, in_f);
  check_isa(isa);
  const int64_t B = x.size(0);
  const int64_t nblk = masks.size(1);
  const int64_t xs = nblk * BLOCK;
  const bool bf16 = values.scalar_type() == at::kBFloat16;
  const bool dp = bf16 && isa >= 4;        // vdpbf16ps on bf16 x
  const bool even_odd = bf16 && isa == 3;  // group_vbmi2: fp32 x, each block's even columns then its odd ones
  at::Tensor xp = at::zeros({B, xs}, x.options().dtype(dp ? at::kBFloat16 : at::kFloat));
  xp.narrow(1, 0, in_f).copy_(x);
  if (even_odd) xp = xp.view({B, nblk, BLOCK / 2, 2}).transpose(2, 3).contiguous().view({B, xs});
  at::Tensor y = at::empty({B, out_f}, x.options().dtype(at::kFloat));
  const uint32_t* M = reinterpret_cast<const uint32_t*>(masks.data_ptr<int32_t>());
  const int64_t* O = row_offsets.data_ptr<int64_t>();
  float* Y = y.data_ptr<float>();
  const float* XF = dp ? nullptr : xp.data_ptr<float>();
  const uint16_t* XH = dp ? reinterpret_cast<const uint16_t*>(xp.data_ptr<at::BFloat16>()) : nullptr;
  const float* VF = bf16 ? nullptr : values.data_ptr<float>();
  const uint16_t* VH = bf16 ? reinterpret_cast<const uint16_t*>(values.data_ptr<at::BFloat16>()) : nullptr;
  const int64_t ngroups = (out_f + R - 1) / R;
  // grain: ~64k weights per task keeps the per-task overhead small
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, in_f * R));
  at::parallel_for(0, ngroups, grain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t r0 = g * R;
      const int64_t nr = std::min<int64_t>(R, out_f - r0);
      const int64_t step = dp ? NBMAX_DP : NBMAX;
      for (int64_t b0 = 0; b0 < B; b0 += step) {
        const int64_t nb = std::min<int64_t>(step, B - b0);
        float* yb = Y + b0 * out_f;
        if (isa == 0) {
          if (bf16) rows_portable<uint16_t>(M, nblk, VH, O, r0, r0 + nr, XF + b0 * xs, xs, nb, yb, out_f);
          else rows_portable<float>(M, nblk, VF, O, r0, r0 + nr, XF + b0 * xs, xs, nb, yb, out_f);
          continue;
        }
        for (int64_t r = r0; r < r0 + nr; r += (nr == R ? R : 1)) {
          const bool full = nr == R;
          if (dp) {
            const uint16_t* xb = XH + b0 * xs;
            if (!full) { OWL_DISPATCH_NB8(nb, group_bf16dp, 1, M, nblk, VH, O, r, xb, xs, yb, out_f) }
            else if (nb <= NBMAX) { OWL_DISPATCH_NB(nb, group_bf16dp, R, M, nblk, VH, O, r, xb, xs, yb, out_f) }
            else {
              for (int64_t h = 0; h < R; h += 2) {
                OWL_DISPATCH_NB8(nb, group_bf16dp, 2, M, nblk, VH, O, r + h, xb, xs, yb, out_f)
              }
            }
          } else if (even_odd) {
            const float* xb = XF + b0 * xs;
            if (full) { OWL_DISPATCH_NB(nb, gvb_h, R, M, nblk, VH, O, r, xb, xs, yb, out_f) }
            else { OWL_DISPATCH_NB(nb, gvb_h, 1, M, nblk, VH, O, r, xb, xs, yb, out_f) }
          } else if (isa >= 2) {  // AVX-512F; also fp32 weights on the VBMI2 (+BF16) paths
            const float* xb = XF + b0 * xs;
            if (bf16) {
              if (full) { OWL_DISPATCH_NB(nb, g512_h, R, M, nblk, VH, O, r, xb, xs, yb, out_f) }
              else { OWL_DISPATCH_NB(nb, g512_h, 1, M, nblk, VH, O, r, xb, xs, yb, out_f) }
            } else {
              if (full) { OWL_DISPATCH_NB(nb, g512_f, R, M, nblk, VF, O, r, xb, xs, yb, out_f) }
              else { OWL_DISPATCH_NB(nb, g512_f, 1, M, nblk, VF, O, r, xb, xs, yb, out_f) }
            }
          } else {
            const float* xb = XF + b0 * xs;
            if (bf16) {
              if (full) { OWL_DISPATCH_NB(nb, g2_h, R, M, nblk, VH, O, r, xb, xs, yb, out_f) }
              else { OWL_DISPATCH_NB(nb, g2_h, 1, M, nblk, VH, O, r, xb, xs, yb, out_f) }
            } else {
              if (full) { OWL_DISPATCH_NB(nb, g2_f, R, M, nblk, VF, O, r, xb, xs, yb, out_f) }
              else { OWL_DISPATCH_NB(nb, g2_f, 1, M, nblk, VF, O, r, xb, xs, yb, out_f) }
            }
          }
        }
      }
    }
  });
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

// ---------------------------------------------------------------- decompression (the tiled dense path)
// One row of W: block k's values start where block k-1's ended; the last block stores only the
// in_f - 32k columns that exist. Reads may run up to 32 values past a row's end (PAD in pack.py).
template <typename T>
void decompress_row_portable(const uint32_t* m, int64_t nblk, const T* p, T* row, int64_t in_f) {
  for (int64_t k = 0; k < nblk; ++k) {
    T block[BLOCK] = {};
    uint32_t mk = m[k];
    while (mk) {
      block[__builtin_ctz(mk)] = *p++;
      mk &= mk - 1;
    }
    std::memcpy(row + k * BLOCK, block, std::min<int64_t>(BLOCK, in_f - k * BLOCK) * sizeof(T));
  }
}

inline uint32_t tail_mask(int64_t n) { return n >= 32 ? 0xffffffffu : ((1u << n) - 1u); }

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2"))) void decompress_row_vbmi2_16(
    const uint32_t* m, int64_t nblk, const uint16_t* p, uint16_t* row, int64_t in_f) {
  for (int64_t k = 0; k < nblk; ++k) {
    const uint32_t mk = m[k];
    __m512i w = _mm512_maskz_expand_epi16(static_cast<__mmask32>(mk), _mm512_loadu_si512(p));
    p += __builtin_popcount(mk);
    _mm512_mask_storeu_epi16(row + k * BLOCK, static_cast<__mmask32>(tail_mask(in_f - k * BLOCK)), w);
  }
}

// 16-bit values without VBMI2: widen 16 lanes to 32 bits, expand, narrow back
__attribute__((target("avx512f"))) void decompress_row_512_16(const uint32_t* m, int64_t nblk, const uint16_t* p,
                                                              uint16_t* row, int64_t in_f) {
  for (int64_t k = 0; k < nblk; ++k) {
    const uint32_t mk = m[k], keep = tail_mask(in_f - k * BLOCK);
    for (int h = 0; h < 2; ++h) {
      const __mmask16 part = static_cast<__mmask16>(mk >> (16 * h));
      __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      __m256i w = _mm512_cvtepi32_epi16(_mm512_maskz_expand_epi32(part, wide));
      p += __builtin_popcount(part);
      const uint32_t store = (keep >> (16 * h)) & 0xffffu;
      if (store == 0xffffu) _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + k * BLOCK + 16 * h), w);
      else if (store) {
        alignas(32) uint16_t tmp[16];
        _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), w);
        std::memcpy(row + k * BLOCK + 16 * h, tmp, __builtin_popcount(store) * sizeof(uint16_t));
      }
    }
  }
}

__attribute__((target("avx512f"))) void decompress_row_512_32(const uint32_t* m, int64_t nblk, const uint32_t* p,
                                                              uint32_t* row, int64_t in_f) {
  for (int64_t k = 0; k < nblk; ++k) {
    const uint32_t mk = m[k], keep = tail_mask(in_f - k * BLOCK);
    for (int h = 0; h < 2; ++h) {
      const __mmask16 part = static_cast<__mmask16>(mk >> (16 * h));
      __m512i w = _mm512_maskz_expand_epi32(part, _mm512_loadu_si512(p));
      p += __builtin_popcount(part);
      _mm512_mask_storeu_epi32(row + k * BLOCK + 16 * h, static_cast<__mmask16>(keep >> (16 * h)), w);
    }
  }
}

// AVX2: 8 columns at a time. bf16: a 16-byte vpshufb table entry per mask byte places the stored
// values and zeros (control 0x80); fp32: the compute path's vpermps + and tables.
struct Avx2Bf16DecompressLut {
  alignas(16) uint8_t ctl[256][16];
  Avx2Bf16DecompressLut() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int j = 0; j < 8; ++j) {
        if (m & (1 << j)) { ctl[m][2 * j] = static_cast<uint8_t>(2 * n); ctl[m][2 * j + 1] = static_cast<uint8_t>(2 * n + 1); ++n; }
        else { ctl[m][2 * j] = ctl[m][2 * j + 1] = 0x80; }
      }
    }
  }
};
const Avx2Bf16DecompressLut& avx2_bf16_decompress_lut() { static Avx2Bf16DecompressLut lut; return lut; }

__attribute__((target("avx2,fma"))) void decompress_row_avx2_16(const uint32_t* m, int64_t nblk, const uint16_t* p,
                                                               uint16_t* row, int64_t in_f) {
  const Avx2Bf16DecompressLut& lut = avx2_bf16_decompress_lut();
  for (int64_t k = 0; k < nblk; ++k) {
    const uint32_t mk = m[k];
    const int64_t width = std::min<int64_t>(BLOCK, in_f - k * BLOCK);
    alignas(32) uint16_t block[BLOCK];
    for (int q = 0; q < 4; ++q) {
      const uint32_t mb = (mk >> (8 * q)) & 0xffu;
      const __m128i src = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i w = _mm_shuffle_epi8(src, _mm_load_si128(reinterpret_cast<const __m128i*>(lut.ctl[mb])));
      p += __builtin_popcount(mb);
      if (width == BLOCK) _mm_storeu_si128(reinterpret_cast<__m128i*>(row + k * BLOCK + 8 * q), w);
      else _mm_store_si128(reinterpret_cast<__m128i*>(block + 8 * q), w);
    }
    if (width < BLOCK) std::memcpy(row + k * BLOCK, block, width * sizeof(uint16_t));
  }
}

__attribute__((target("avx2,fma"))) void decompress_row_avx2_32(const uint32_t* m, int64_t nblk, const uint32_t* p,
                                                               uint32_t* row, int64_t in_f) {
  const Avx2Lut& lut = avx2_lut();
  for (int64_t k = 0; k < nblk; ++k) {
    const uint32_t mk = m[k];
    const int64_t width = std::min<int64_t>(BLOCK, in_f - k * BLOCK);
    alignas(32) uint32_t block[BLOCK];
    for (int q = 0; q < 4; ++q) {
      const uint32_t mb = (mk >> (8 * q)) & 0xffu;
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      v = _mm256_permutevar8x32_epi32(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.idx[mb])));
      v = _mm256_and_si256(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.keep[mb])));
      p += __builtin_popcount(mb);
      if (width == BLOCK) _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + k * BLOCK + 8 * q), v);
      else _mm256_store_si256(reinterpret_cast<__m256i*>(block + 8 * q), v);
    }
    if (width < BLOCK) std::memcpy(row + k * BLOCK, block, width * sizeof(uint32_t));
  }
}

// dense rows W[r0:r1] written into out [r1-r0, in] (a reusable scratch tile), values' dtype
void decompress_rows_into(const at::Tensor& masks, const at::Tensor& values, const at::Tensor& row_offsets,
                          int64_t r0, int64_t r1, at::Tensor out, int64_t isa) {
  TORCH_CHECK(masks.scalar_type() == at::kInt && masks.dim() == 2 && masks.is_contiguous() && out.dim() == 2,
              "decompress_rows_into: masks must be contiguous int32 [out, ceil(in/32)], out a 2-D tile");
  check_isa(isa);
  const int64_t nblk = masks.size(1);
  const int64_t in_f = out.size(1);
  TORCH_CHECK(r0 >= 0 && r1 <= masks.size(0) && r0 <= r1 && out.size(0) >= r1 - r0 && out.is_contiguous() &&
                  in_f <= nblk * BLOCK && in_f > (nblk - 1) * BLOCK && out.scalar_type() == values.scalar_type() &&
                  (values.element_size() == 2 || values.element_size() == 4) && values.dim() == 1 &&
                  values.is_contiguous(),
              "decompress_rows_into: bad range, scratch tile or dtype");
  TORCH_CHECK(row_offsets.scalar_type() == at::kLong && row_offsets.numel() == masks.size(0) + 1 &&
                  row_offsets.is_contiguous() && values.numel() >= row_offsets[masks.size(0)].item<int64_t>() + BLOCK,
              "decompress_rows_into: row_offsets must be contiguous int64 [out+1] and values hold nnz + 32 padding");
  const uint32_t* M = reinterpret_cast<const uint32_t*>(masks.data_ptr<int32_t>());
  const int64_t* O = row_offsets.data_ptr<int64_t>();
  const bool half = values.element_size() == 2;
  at::parallel_for(r0, r1, 16, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) {
      const uint32_t* m = M + r * nblk;
      if (half) {
        const uint16_t* p = static_cast<const uint16_t*>(values.data_ptr()) + O[r];
        uint16_t* row = static_cast<uint16_t*>(out.data_ptr()) + (r - r0) * in_f;
        if (isa >= 3) decompress_row_vbmi2_16(m, nblk, p, row, in_f);  // VBMI2 (with or without BF16)
        else if (isa == 2) decompress_row_512_16(m, nblk, p, row, in_f);
        else if (isa == 1) decompress_row_avx2_16(m, nblk, p, row, in_f);
        else decompress_row_portable<uint16_t>(m, nblk, p, row, in_f);
      } else {
        const uint32_t* p = static_cast<const uint32_t*>(values.data_ptr()) + O[r];
        uint32_t* row = static_cast<uint32_t*>(out.data_ptr()) + (r - r0) * in_f;
        if (isa >= 2) decompress_row_512_32(m, nblk, p, row, in_f);
        else if (isa == 1) decompress_row_avx2_32(m, nblk, p, row, in_f);
        else decompress_row_portable<uint32_t>(m, nblk, p, row, in_f);
      }
    }
  });
}

// bit 0: avx2+fma, bit 1: avx512f, bit 2: avx512 vbmi2+bf16 (+bw, vl), bit 3: avx512 vbmi2 (+bw, vl)
int64_t cpu_features() {
  __builtin_cpu_init();
  int64_t f = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) f |= 1;
  if (__builtin_cpu_supports("avx512f")) f |= 2;
  const bool vbmi2 = (f & 2) && __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl");
  if (vbmi2) f |= 8;
  if (vbmi2 && __builtin_cpu_supports("avx512bf16")) f |= 4;
  return f;
}

// cpu_features() bits each path needs, by isa number: portable, avx2, avx512, avx512_vbmi2, avx512_bf16
constexpr int64_t ISA_NEEDS[5] = {0, 1, 2, 8, 4};

void check_isa(int64_t isa) {
  static const int64_t feats = cpu_features();
  TORCH_CHECK(isa >= 0 && isa <= 4, "isa=", isa, " is not a compiled path (0 portable .. 4 avx512_bf16)");
  TORCH_CHECK((feats & ISA_NEEDS[isa]) == ISA_NEEDS[isa], "isa=", isa, " needs CPU features this CPU lacks (cpu_features ",
              feats, ")");
}

// ---------------------------------------------------------------- the whole op in C++ (no Python per call)
// isa: OWL_SPARSE_ISA when set (checked against the CPU), else the best path the CPU has.
int64_t resolve_isa() {
  static const int64_t feats = cpu_features();
  const char* forced = std::getenv("OWL_SPARSE_ISA");
  std::string name;  // the same spelling rules as dispatch.selected_isa: case and spaces ignored
  for (const char* c = forced ? forced : ""; *c; ++c)
    if (!std::isspace(static_cast<unsigned char>(*c))) name += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
  if (!name.empty()) {
    int64_t isa = -1;
    if (name == "avx512_bf16") isa = 4;
    else if (name == "avx512_vbmi2") isa = 3;
    else if (name == "avx512") isa = 2;
    else if (name == "avx2") isa = 1;
    else if (name == "portable") isa = 0;
    TORCH_CHECK(isa >= 0, "OWL_SPARSE_ISA='", name, "' is not a compiled path; allowed: avx512_bf16, avx512_vbmi2, avx512, "
                "avx2, portable (or torch, handled in Python)");
    TORCH_CHECK((feats & ISA_NEEDS[isa]) == ISA_NEEDS[isa], "OWL_SPARSE_ISA='", name, "' but this CPU lacks it");
    return isa;
  }
  return (feats & 4) ? 4 : (feats & 8) ? 3 : (feats & 2) ? 2 : (feats & 1) ? 1 : 0;
}

// many rows of x: bf16 on AVX-512 BF16, one vdpbf16ps per non-empty column pair; fp32 on AVX-512, one
// vfmadd231ps per non-zero weight (sparse_gemm_pairs.cpp)
at::Tensor sparse_gemm_pairs(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& values,
                             const at::Tensor& row_offsets, int64_t out_f, int64_t in_f);

// y = x W^T by decompressing ~tile_bytes of W at a time into a reused per-thread scratch tile
at::Tensor tiled_dense(const at::Tensor& x2, const at::Tensor& masks, const at::Tensor& values,
                       const at::Tensor& row_offsets, int64_t out_f, int64_t in_f, int64_t isa, int64_t tile_bytes) {
  thread_local at::Tensor scratch;
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(out_f, tile_bytes / std::max<int64_t>(
      1, in_f * values.element_size())));
  if (!scratch.defined() || scratch.scalar_type() != values.scalar_type() || scratch.numel() < rows * in_f)
    scratch = at::empty({rows * in_f}, values.options());
  at::Tensor tile_all = scratch.narrow(0, 0, rows * in_f).view({rows, in_f});
  at::Tensor y = at::empty({x2.size(0), out_f}, x2.options());
  for (int64_t r0 = 0; r0 < out_f; r0 += rows) {
    const int64_t r1 = std::min<int64_t>(out_f, r0 + rows);
    decompress_rows_into(masks, values, row_offsets, r0, r1, tile_all, isa);
    y.narrow(1, r0, r1 - r0).copy_(at::linear(x2, tile_all.narrow(0, 0, r1 - r0)));
  }
  return y;
}

// bf16 (AVX-512 BF16): the pair kernel's cost grows in steps of 16 rows of x (a partial group costs a whole one)
// and the tiled path's grows with every row, so the pair kernel wins from pairs_min_batch rows at whole groups of
// 16, and from twice that at any count. fp32 (AVX-512): every count above the sparse kernel's (dispatch.py:
// runs_pair_kernel, the same rule, and its measurements).
static bool runs_pair_kernel(int64_t rows, int64_t isa, at::ScalarType dtype, int64_t pairs_min_batch,
                             int64_t max_batch_fp32) {
  if (dtype == at::kFloat) return isa >= 2 && rows > max_batch_fp32;
  return dtype == at::kBFloat16 && isa >= 4 && rows >= pairs_min_batch &&
         (rows % 16 == 0 || rows > 2 * pairs_min_batch);
}

// Whether `rows` rows of x go to the sparse kernel (dispatch.py: runs_sparse_kernel, the same rule and its
// measurements): bf16 weights on the AVX2 / AVX-512F / VBMI2 paths at every count (without a native bf16 dot every
// dense bf16 GEMM widens to fp32 as the kernel does, on 30% of the weights), fp32 up to max_batch_fp32 on the
// AVX-512 paths, bf16 up to max_batch_bf16 on AVX-512 BF16, else up to max_batch.
static bool runs_sparse_kernel(int64_t rows, int64_t isa, at::ScalarType dtype, int64_t max_batch,
                               int64_t max_batch_bf16, int64_t max_batch_fp32) {
  if (rows <= 0 || (dtype != at::kFloat && dtype != at::kBFloat16)) return false;
  if (dtype == at::kBFloat16 && isa >= 1 && isa <= 3) return true;
  if (dtype == at::kBFloat16 && isa == 4) return rows <= max_batch_bf16;
  return rows <= (dtype == at::kFloat && isa >= 2 ? max_batch_fp32 : max_batch);
}

// y[..., out] = x[..., in] W^T (+ bias): the sparse kernel where runs_sparse_kernel, the pair kernel where
// runs_pair_kernel (AVX-512 BF16, bf16), tiled dense between and elsewhere
at::Tensor sparse_linear(const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& masks,
                         const at::Tensor& values, const at::Tensor& row_offsets, int64_t out_f, int64_t in_f,
                         int64_t max_batch, int64_t max_batch_bf16, int64_t max_batch_fp32, int64_t pairs_min_batch,
                         int64_t tile_bytes) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_f && x.is_contiguous(), "x must be contiguous [..., ", in_f, "]");
  const at::Tensor x2 = x.reshape({-1, in_f});
  const int64_t isa = resolve_isa();
  const bool kernel =
      runs_sparse_kernel(x2.size(0), isa, values.scalar_type(), max_batch, max_batch_bf16, max_batch_fp32);
  // where runs_pair_kernel: the pair kernel (no dense W at all); the rest above max_batch: decompress tiles into
  // dense GEMMs
  const bool pairs = !kernel && runs_pair_kernel(x2.size(0), isa, values.scalar_type(), pairs_min_batch,
                                                 max_batch_fp32);
  at::Tensor y = kernel  ? sparse_gemm(x2, masks, values, row_offsets, out_f, in_f, isa)
                 : pairs ? sparse_gemm_pairs(x2, masks, values, row_offsets, out_f, in_f)
                         : tiled_dense(x2, masks, values, row_offsets, out_f, in_f, isa, tile_bytes);
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = out_f;
  return y.view(sizes);
}

TORCH_LIBRARY(owl_ext, m) {
  m.def("sparse_gemm(Tensor x, Tensor masks, Tensor values, Tensor row_offsets, int out_features, "
        "int in_features, int isa) -> Tensor");
  m.def("decompress_rows_into(Tensor masks, Tensor values, Tensor row_offsets, int r0, int r1, Tensor(a!) out, "
        "int isa) -> ()");
  m.def("sparse_gemm_pairs(Tensor x, Tensor masks, Tensor values, Tensor row_offsets, int out_features, "
        "int in_features) -> Tensor");
  m.def("sparse_linear(Tensor x, Tensor? bias, Tensor masks, Tensor values, Tensor row_offsets, int out_features, "
        "int in_features, int max_batch, int max_batch_bf16, int max_batch_fp32, int pairs_min_batch, "
        "int tile_bytes) -> Tensor");
}

TORCH_LIBRARY_IMPL(owl_ext, CPU, m) {
  m.impl("sparse_gemm", &sparse_gemm);
  m.impl("decompress_rows_into", &decompress_rows_into);
  m.impl("sparse_gemm_pairs", &sparse_gemm_pairs);
  m.impl("sparse_linear", &sparse_linear);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("cpu_features", &cpu_features, "bit0 avx2+fma, bit1 avx512f, bit2 vbmi2+bf16, bit3 vbmi2"); }

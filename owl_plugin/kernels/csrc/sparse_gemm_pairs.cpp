// owl-plugin: sparse GEMM for many rows of x (prefill), AVX-512 BF16, over the packed bitmask layout.
//
// y[m, r] = sum_c x[m, c] W[r, c]. vdpbf16ps multiplies bf16 *pairs*: acc += a.lo*b.lo + a.hi*b.hi per
// fp32 lane. Dense GEMM spends one instruction per column pair (c, c+1) and 16 rows of x; this kernel
// spends one per *non-empty* pair of a weight row (at least one of W[r, c], W[r, c+1] non-zero), so at
// sparsity s it issues 1 - s^2 of the dense count (0.51 at 70%, 0.75 at 50%).
//
// Layout per call:
// - x is turned into pair-major blocks of MB = 64 rows (one dword gather per pair and 16 rows):
//   xb[mb][q][lane] = (x[mb*MB+lane, 2q], x[.., 2q+1]) as one dword, so the 64 rows of one column pair are 4
//   contiguous zmm (kept in a thread-local scratch between calls).
// - each weight row becomes a list of its non-empty pairs, one 8-byte entry each (byte offset of q in an x
//   block, the bf16 pair). The lists of NR rows are built once per call (vpexpandw of the bitmask block,
//   vptestmd, then per 8 entries one vpermt2d whose indices, read from a 256-entry table by the 8-bit mask of
//   kept lanes, interleave offsets and pairs and drop the empty ones at once) and reused for every x block.
//   Both compress forms are slow on AMD Zen 4: the memory form is microcoded, and the register form (the
//   previous build: vpermt2d then vpcompressq) made the build 1.8x slower than the table (2560x2048, 70%, one
//   core: 1.00 ms against 0.56 ms, the same entries).
// - loops: rows of W in blocks of NR (threads) -> x blocks of 64 rows -> column chunks of KC_WORDS*16 pairs
//   (32 KB of x, mostly in L1) -> rows -> the row's pairs in that chunk (P = 4 pairs in flight x V vectors of 16
//   rows: up to 16 accumulators) into an NR x 64 fp32 block, written into y [M, out] as bf16 (rounded once) by a gather per 16 rows.
//   The last x block runs only its live groups of 16 rows (row_chunk<V>, V = 1..4), so its cost follows M.
// Bound by the 64-byte x load each vdpbf16ps needs: ~1.1-1.3x of a dense bf16 GEMM at 70% from 64 rows of x
// (where it runs: runs_pair_kernel in dispatch.py).
//
// fp32 weights (any AVX-512 path): the same loops with one *column* per entry (a pair of one): one vfmadd231ps per
// non-zero weight and 16 rows of x instead of one per weight, so at sparsity s it issues 1 - s of a dense fp32
// GEMM's FMAs (0.3 at 70%); entries are built from the bitmask by vpexpandd (AVX-512F) and x is packed
// column-major per 64-row block by the same dword gather.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t MB = 64;         // rows of x per block: 4 zmm of fp32 lanes
constexpr int64_t NR = 64;         // weight rows whose pair lists are built at once (one task)
constexpr int64_t KC_WORDS = 8;    // mask words per column chunk: 8 x 16 pairs x 256 B = 32 KB of x (measured
                                   // best of 4/5/6/8/12 at 2560x2048 and 2048x5632)
constexpr int64_t KC_WORDS_FP32 = 4;  // fp32: 4 x 32 columns x 256 B, the same 32 KB of x

// One entry per non-empty pair: low dword = byte offset of the pair's row in an x block, high dword = the
// bf16 pair (W[r, 2q], W[r, 2q+1]); one 8-byte load per pair (measured 3-4% faster than two arrays).
struct PairLists {
  std::vector<uint64_t> entry;
  std::vector<int64_t> start;  // [row][chunk]: first entry of that chunk; [row][nchunk] = end
};

// PAIR_LUT.index[keep]: the dword indices that interleave (off[i], v[i]) for the lanes i < 8 set in `keep`, in
// order, as permutex2var(off, index, v) reads them (off: 0-15, v: 16-31); the unused tail points at lane 0.
struct PairLut {
  uint8_t index[256][16];
};
constexpr PairLut make_pair_lut() {
  PairLut lut{};
  for (int keep = 0; keep < 256; ++keep) {
    int j = 0;
    for (int i = 0; i < 8; ++i) {
      if ((keep >> i) & 1) {
        lut.index[keep][2 * j] = static_cast<uint8_t>(i);
        lut.index[keep][2 * j + 1] = static_cast<uint8_t>(16 + i);
        ++j;
      }
    }
    for (; j < 8; ++j) {
      lut.index[keep][2 * j] = 0;
      lut.index[keep][2 * j + 1] = 16;
    }
  }
  return lut;
}
alignas(64) constexpr PairLut PAIR_LUT = make_pair_lut();

// Append the entries (off[i], v[i]) of the lanes i set in `keep` to out[n ..) and return the new n: one table
// permute per 8 lanes (the high half's indices are the low half's + 8), full 64-byte stores (the tail past the
// new n is overwritten next or never read). Both forms use it.
__attribute__((target("avx512f"))) inline int64_t append_entries(__m512i off, __m512i v, __mmask16 keep,
                                                                 uint64_t* out, int64_t n) {
  const unsigned low = keep & 0xffu, high = keep >> 8;
  const __m512i low_index = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(PAIR_LUT.index[low])));
  const __m512i high_index = _mm512_add_epi32(
      _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(PAIR_LUT.index[high]))),
      _mm512_set1_epi32(8));
  _mm512_storeu_si512(out + n, _mm512_permutex2var_epi32(off, low_index, v));
  n += __builtin_popcount(low);
  _mm512_storeu_si512(out + n, _mm512_permutex2var_epi32(off, high_index, v));
  return n + __builtin_popcount(high);
}

// Build the pair lists of rows [r0, r1). Entries are written 16 at a time (full stores), so the vector keeps
// 16 entries of slack.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2"))) void build_pairs(
    const uint32_t* masks, int64_t nblk, const uint16_t* values, const int64_t* row_offsets, int64_t r0,
    int64_t r1, int64_t nchunk, PairLists& lists) {
  lists.entry.resize((r1 - r0) * nblk * 16 + 16);
  lists.start.resize((r1 - r0) * (nchunk + 1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(static_cast<int>(16 * MB * 4));  // bytes between pair q and q+16
  uint64_t* out = lists.entry.data();
  int64_t n = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* m = masks + r * nblk;
    const uint16_t* p = values + row_offsets[r];
    int64_t* start = lists.start.data() + (r - r0) * (nchunk + 1);
    __m512i off = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(MB * 4)));
    for (int64_t k = 0; k < nblk; ++k) {
      if (k % KC_WORDS == 0) start[k / KC_WORDS] = n;
      const uint32_t w = m[k];
      const __m512i v = _mm512_maskz_expandloadu_epi16(w, p);
      p += __builtin_popcount(w);
      n = append_entries(off, v, _mm512_test_epi32_mask(v, v), out, n);  // the non-empty pairs
      off = _mm512_add_epi32(off, step);
    }
    start[nchunk] = n;
  }
}

// fp32: the entries of rows [r0, r1) are their non-zero weights, one per column (byte offset of column c in an x
// block, the fp32 weight's bits); 16 columns per vpexpandd, then the same two 8-lane compresses.
__attribute__((target("avx512f"))) void build_columns(
    const uint32_t* masks, int64_t nblk, const uint32_t* values, const int64_t* row_offsets, int64_t r0,
    int64_t r1, int64_t nchunk, PairLists& lists) {
  lists.entry.resize((r1 - r0) * nblk * 32 + 16);
  lists.start.resize((r1 - r0) * (nchunk + 1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(static_cast<int>(16 * MB * 4));  // bytes between column c and c+16
  uint64_t* out = lists.entry.data();
  int64_t n = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* m = masks + r * nblk;
    const uint32_t* p = values + row_offsets[r];
    int64_t* start = lists.start.data() + (r - r0) * (nchunk + 1);
    __m512i off = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(MB * 4)));
    for (int64_t k = 0; k < nblk; ++k) {
      if (k % KC_WORDS_FP32 == 0) start[k / KC_WORDS_FP32] = n;
      for (int half = 0; half < 2; ++half) {
        const __mmask16 bits = static_cast<__mmask16>(m[k] >> (16 * half));
        const __m512i v = _mm512_maskz_expandloadu_epi32(bits, p);
        p += __builtin_popcount(static_cast<unsigned>(bits));
        n = append_entries(off, v, bits, out, n);  // the non-zero weights
        off = _mm512_add_epi32(off, step);
      }
    }
    start[nchunk] = n;
  }
}

// acc[0 .. 16*V) (+)= sum over the row's pairs in [e, end) of (x pair) . (W pair), for the first 16*V rows of
// one x block (V = 4: a full block; fewer for the last block of a call, so 80 rows of x cost 1.25 blocks, not 2).
// P pairs per step into separate accumulators: P*V independent vdpbf16ps chains in flight. P is the same for
// every V, so the summation order, and so each row of y, does not depend on how many rows share its block
// (a sequence's logits do not change with the batch it is served in).
constexpr int P = 4;

template <int V>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void row_chunk(
    const char* xblock, const uint64_t* entry, int64_t e, int64_t end, float* acc, bool first) {
  __m512 a[P][V];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) a[p][v] = _mm512_setzero_ps();
  for (; e + P <= end; e += P) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const uint64_t ep = entry[e + p];
      const char* xp = xblock + static_cast<uint32_t>(ep);
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(ep >> 32));
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) a[p][v] = _mm512_dpbf16_ps(a[p][v], (__m512bh)_mm512_loadu_si512(xp + 64 * v), w);
    }
  }
  for (; e < end; ++e) {
    const uint64_t ep = entry[e];
    const char* xp = xblock + static_cast<uint32_t>(ep);
    const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(ep >> 32));
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) a[0][v] = _mm512_dpbf16_ps(a[0][v], (__m512bh)_mm512_loadu_si512(xp + 64 * v), w);
  }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    __m512 sum = a[0][v];
#pragma GCC unroll 8
    for (int p = 1; p < P; ++p) sum = _mm512_add_ps(sum, a[p][v]);
    if (!first) sum = _mm512_add_ps(sum, _mm512_loadu_ps(acc + 16 * v));
    _mm512_storeu_ps(acc + 16 * v, sum);
  }
}

// fp32: acc[0 .. 16*V) (+)= sum over the row's entries in [e, end) of x[:, c] * W[r, c] (the same P x V chains)
template <int V>
__attribute__((target("avx512f"))) inline void row_chunk_fp32(
    const char* xblock, const uint64_t* entry, int64_t e, int64_t end, float* acc, bool first) {
  __m512 a[P][V];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) a[p][v] = _mm512_setzero_ps();
  for (; e + P <= end; e += P) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const uint64_t ep = entry[e + p];
      const char* xp = xblock + static_cast<uint32_t>(ep);
      const __m512 w = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(ep >> 32)));
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) a[p][v] = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 64 * v), w, a[p][v]);
    }
  }
  for (; e < end; ++e) {
    const uint64_t ep = entry[e];
    const char* xp = xblock + static_cast<uint32_t>(ep);
    const __m512 w = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(ep >> 32)));
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) a[0][v] = _mm512_fmadd_ps(_mm512_loadu_ps(xp + 64 * v), w, a[0][v]);
  }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    __m512 sum = a[0][v];
#pragma GCC unroll 8
    for (int p = 1; p < P; ++p) sum = _mm512_add_ps(sum, a[p][v]);
    if (!first) sum = _mm512_add_ps(sum, _mm512_loadu_ps(acc + 16 * v));
    _mm512_storeu_ps(acc + 16 * v, sum);
  }
}

using RowChunk = void (*)(const char*, const uint64_t*, int64_t, int64_t, float*, bool);
constexpr RowChunk ROW_CHUNK[4] = {row_chunk<1>, row_chunk<2>, row_chunk<3>, row_chunk<4>};
constexpr RowChunk ROW_CHUNK_FP32[4] = {row_chunk_fp32<1>, row_chunk_fp32<2>, row_chunk_fp32<3>, row_chunk_fp32<4>};

// x block mb, pair-major: xb[q * MB + lane] = (x[m, 2q], x[m, 2q+1]) for m = mb*MB + lane (zeros past M, in_f).
// 16 rows at a time by one dword gather per pair (the pair is one aligned-enough dword of a bf16 row).
__attribute__((target("avx512f"))) void pack_x_block(const uint16_t* x, int64_t M, int64_t in_f, int64_t mb,
                                                     int64_t pairs, uint32_t* xb) {
  const __m512i row_step = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32(static_cast<int>(in_f)));
  const int64_t groups = std::min<int64_t>(MB, M - mb * MB);  // later groups of the block are never read
  for (int64_t g = 0; g < groups; g += 16) {
    const int64_t m0 = mb * MB + g;
    const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(16, M - m0));
    const __mmask16 live = static_cast<__mmask16>((1u << rows) - 1u);
    const uint16_t* base = x + m0 * in_f;
    for (int64_t q = 0; q < pairs; ++q) {
      uint32_t* dst = xb + q * MB + g;
      if (rows == 0 || 2 * q >= in_f) {
        _mm512_storeu_si512(dst, _mm512_setzero_si512());
      } else if (2 * q + 1 < in_f) {
        _mm512_storeu_si512(dst, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, row_step, base + 2 * q, 2));
      } else {  // odd in_f: the last pair has only its low half
        for (int64_t i = 0; i < 16; ++i) dst[i] = i < rows ? base[i * in_f + 2 * q] : 0u;
      }
    }
  }
}

// y[m, r0 .. r1) = bf16(acc[r - r0][m - mb*MB]) for the block's live rows of x
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void store_block(
    const float (*acc)[MB], int64_t r0, int64_t r1, int64_t mb, int64_t M, int64_t out_f, at::BFloat16* y) {
  const __m512i col = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(static_cast<int>(MB)));
  const int64_t lanes = std::min<int64_t>(MB, M - mb * MB);
  for (int64_t lane = 0; lane < lanes; ++lane) {
    at::BFloat16* yrow = y + (mb * MB + lane) * out_f;
    for (int64_t r = r0; r < r1; r += 16) {
      const int64_t n = std::min<int64_t>(16, r1 - r);
      const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, col, &acc[r - r0][lane], 4);
      _mm256_mask_storeu_epi16(yrow + r, k, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// fp32: x block mb, column-major: xb[c * MB + lane] = x[m, c] for m = mb*MB + lane (zeros past M, in_f), 16 rows
// per dword gather.
__attribute__((target("avx512f"))) void pack_x_block_fp32(const float* x, int64_t M, int64_t in_f, int64_t mb,
                                                          int64_t columns, float* xb) {
  const __m512i row_step = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32(static_cast<int>(in_f)));
  const int64_t groups = std::min<int64_t>(MB, M - mb * MB);
  for (int64_t g = 0; g < groups; g += 16) {
    const int64_t m0 = mb * MB + g;
    const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(16, M - m0));
    const __mmask16 live = static_cast<__mmask16>((1u << rows) - 1u);
    const float* base = x + m0 * in_f;
    for (int64_t c = 0; c < columns; ++c) {
      float* dst = xb + c * MB + g;
      if (rows == 0 || c >= in_f) _mm512_storeu_ps(dst, _mm512_setzero_ps());
      else _mm512_storeu_ps(dst, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, row_step, base + c, 4));
    }
  }
}

// fp32: y[m, r0 .. r1) = acc[r - r0][m - mb*MB] for the block's live rows of x
__attribute__((target("avx512f"))) void store_block_fp32(const float (*acc)[MB], int64_t r0, int64_t r1, int64_t mb,
                                                         int64_t M, int64_t out_f, float* y) {
  const __m512i col = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(static_cast<int>(MB)));
  const int64_t lanes = std::min<int64_t>(MB, M - mb * MB);
  for (int64_t lane = 0; lane < lanes; ++lane) {
    float* yrow = y + (mb * MB + lane) * out_f;
    for (int64_t r = r0; r < r1; r += 16) {
      const int64_t n = std::min<int64_t>(16, r1 - r);
      const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
      _mm512_mask_storeu_ps(yrow + r, k, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, col, &acc[r - r0][lane], 4));
    }
  }
}

}  // namespace

// sparse_linear.cpp: shapes, dtypes and padding of x and the packed tensors; the CPU has path `isa`
void check_inputs(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& values,
                  const at::Tensor& row_offsets, int64_t out_f, int64_t in_f);
void check_isa(int64_t isa);

// x blocks kept between calls up to this size; a larger scratch (a long prefill) is freed after its call, so one
// 8k-token prompt does not hold ~0.2 GB per thread for the life of the process (its page faults cost ~1% of it)
constexpr int64_t KEEP_SCRATCH_BYTES = 32 << 20;

// y [M, out] = x [M, in] @ W^T, W packed: bf16 (pairs; needs AVX-512 VBMI2 + BF16, isa 4) or fp32 (columns; needs
// AVX-512F). The caller (sparse_linear.cpp) only sends it there.
at::Tensor sparse_gemm_pairs(const at::Tensor& x, const at::Tensor& masks, const at::Tensor& values,
                             const at::Tensor& row_offsets, int64_t out_f, int64_t in_f) {
  check_inputs(x, masks, values, row_offsets, out_f, in_f);
  const bool fp32 = x.scalar_type() == at::kFloat;
  TORCH_CHECK(fp32 || x.scalar_type() == at::kBFloat16, "sparse_gemm_pairs: x and values must be bfloat16 or float32");
  check_isa(fp32 ? 2 : 4);  // fp32: AVX-512F; bf16: AVX-512 VBMI2 + BF16
  const int64_t nblk = masks.size(1);
  const int64_t M = x.size(0);
  const int64_t nmb = (M + MB - 1) / MB;
  const int64_t units = nblk * (fp32 ? 32 : 16);  // x columns (fp32) or column pairs (bf16) of the padded width
  const int64_t kc = fp32 ? KC_WORDS_FP32 : KC_WORDS;
  const int64_t nchunk = (nblk + kc - 1) / kc;
  const int64_t xblock_words = units * MB;
  thread_local at::Tensor scratch;  // reused: a fresh buffer costs page faults on every call
  if (!scratch.defined() || scratch.numel() < nmb * xblock_words) scratch = at::empty({nmb * xblock_words}, x.options().dtype(at::kInt));
  uint32_t* XB = reinterpret_cast<uint32_t*>(scratch.data_ptr<int32_t>());
  at::parallel_for(0, nmb, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t mb = m0; mb < m1; ++mb) {
      if (fp32) pack_x_block_fp32(x.data_ptr<float>(), M, in_f, mb, units, reinterpret_cast<float*>(XB + mb * xblock_words));
      else pack_x_block(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), M, in_f, mb, units,
                        XB + mb * xblock_words);
    }
  });
  at::Tensor y = at::empty({M, out_f}, x.options());
  const uint32_t* Mk = reinterpret_cast<const uint32_t*>(masks.data_ptr<int32_t>());
  const int64_t* O = row_offsets.data_ptr<int64_t>();
  const int64_t nrb = (out_f + NR - 1) / NR;
  at::parallel_for(0, nrb, 1, [&](int64_t b0, int64_t b1) {
    PairLists lists;
    alignas(64) float acc[NR][MB];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * NR, r1 = std::min(out_f, r0 + NR);
      if (fp32) build_columns(Mk, nblk, reinterpret_cast<const uint32_t*>(values.data_ptr<float>()), O, r0, r1, nchunk, lists);
      else build_pairs(Mk, nblk, reinterpret_cast<const uint16_t*>(values.data_ptr<at::BFloat16>()), O, r0, r1, nchunk, lists);
      for (int64_t mb = 0; mb < nmb; ++mb) {
        const char* xblock = reinterpret_cast<const char*>(XB + mb * xblock_words);
        const int64_t vectors = (std::min<int64_t>(MB, M - mb * MB) + 15) / 16;
        const RowChunk chunk = (fp32 ? ROW_CHUNK_FP32 : ROW_CHUNK)[vectors - 1];
        for (int64_t c = 0; c < nchunk; ++c) {
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t* start = lists.start.data() + (r - r0) * (nchunk + 1);
            chunk(xblock, lists.entry.data(), start[c], start[c + 1], acc[r - r0], c == 0);
          }
        }
        if (fp32) store_block_fp32(acc, r0, r1, mb, M, out_f, y.data_ptr<float>());
        else store_block(acc, r0, r1, mb, M, out_f, y.data_ptr<at::BFloat16>());
      }
    }
  });
  if (scratch.numel() * 4 > KEEP_SCRATCH_BYTES) scratch = at::Tensor();
  return y;
}

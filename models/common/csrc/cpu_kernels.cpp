// Batch-invariant fp32 CPU kernels for decode and verify (AVX2 + FMA; the quantized linear also
// in AVX-512 where the CPU has it, chosen at run time, with the same bits).
//
// skinny_linear: y[m, n] = sum_k x[m, k] * w[n, k] for up to ~64 rows m. attend: attention of
// those rows over the KV cache. Both compute every output element by the same sequence of
// floating-point operations whatever the number of rows is and wherever a row sits in the call,
// so a token's logits are bit-identical whether it is decoded alone or verified among 63 others:
// fp32 speculative output equals target-only output by construction.
//
// The rule that makes this hold: one output = ONE 8-lane accumulator, fma over k in blocks of 8
// in order (the K % 8 tail as one more fma on zero-padded masked loads), then the same fixed
// tree over the 8 lanes. Register tiles of different shapes (MB x rows by NB weight rows) only
// change which outputs are computed side by side, never how one is computed.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// Lane sums of four accumulators, each by the tree ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)).
// Lane i of the result depends on the i-th argument only, so zero padding changes no bits.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// The lanes k < rem of a K % 8 tail.
inline __m256i tail_mask(int64_t rem) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), lanes);
}

// Software prefetch of the weight block that comes next, spread evenly over the k steps of the
// current block's tiles (`rate` cache lines every `every` steps), so that reading it from DRAM
// overlaps this block's arithmetic instead of stalling the next block's first pass (one line per
// step until done, front-loaded, was ~7% slower at 32-64 rows). Into L2 (T1): used a block later.
struct Prefetch {
  const char* p = nullptr;
  const char* end = nullptr;
  int64_t rate = 0;       // lines per prefetching step
  int64_t every = 1;      // prefetch on one step in `every`
  int64_t count = 0;
  inline void step() {
    if (++count < every) return;
    count = 0;
    for (int64_t r = 0; r < rate && p < end; ++r, p += 64) _mm_prefetch(p, _MM_HINT_T1);
  }
};

// y[i, j] = the lane sum of acc[i][j] (hsum4's fixed tree), for a tile's MB x NB outputs.
template <int MB, int NB>
__attribute__((always_inline)) inline void store_sums(__m256 (&acc)[MB][NB], float* y, int64_t ldy) {
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < MB; ++i) {
    for (int j = 0; j < NB; j += 4) {
      const __m128 s = hsum4(acc[i][j], j + 1 < NB ? acc[i][j + 1] : zero, j + 2 < NB ? acc[i][j + 2] : zero,
                             j + 3 < NB ? acc[i][j + 3] : zero);
      float* out = y + i * ldy + j;
      if (j + 4 <= NB) {
        _mm_storeu_ps(out, s);
      } else {
        alignas(16) float tmp[4];
        _mm_store_ps(tmp, s);
        for (int t = 0; t < NB - j; ++t) out[t] = tmp[t];
      }
    }
  }
}

// One register tile: y[i, j] = x[i] . w[j] for i < MB, j < NB, over all of K (x and w rows
// are K apart, y rows ldy apart). The shorter side of the tile stays in registers and the other
// is loaded one vector at a time: 12 accumulators + 3 or 4 operands fill the 16 ymm registers,
// and each k step does MB * NB fmas for MB + NB loads.
template <int MB, int NB>
__attribute__((always_inline)) inline void tile(const float* x, const float* w, int64_t K, float* y, int64_t ldy,
                                                Prefetch& pf) {
  __m256 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  auto step = [&](auto load, int64_t k) {
    if constexpr (MB <= NB) {
      __m256 xv[MB];
      for (int i = 0; i < MB; ++i) xv[i] = load(x + i * K + k);
      for (int j = 0; j < NB; ++j) {
        const __m256 wv = load(w + j * K + k);
        for (int i = 0; i < MB; ++i) acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
      }
    } else {
      __m256 wv[NB];
      for (int j = 0; j < NB; ++j) wv[j] = load(w + j * K + k);
      for (int i = 0; i < MB; ++i) {
        const __m256 xv = load(x + i * K + k);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
  };
  const int64_t K8 = K & ~int64_t(7);
  for (int64_t k = 0; k < K8; k += 8) {
    pf.step();
    step([](const float* p) { return _mm256_loadu_ps(p); }, k);
  }
  auto finish = [&]() { store_sums<MB, NB>(acc, y, ldy); };
  // Two copies of the ending, so that the accumulators need not pass through memory where the
  // paths would merge (GCC spilled them there: slow on short K such as attention's head size).
  if (K8 < K) {  // masked lanes load 0, and fma(0, 0, acc) leaves acc's value as it is
    const __m256i mask = tail_mask(K - K8);
    step([mask](const float* p) { return _mm256_maskload_ps(p, mask); }, K8);
    finish();
  } else {
    finish();
  }
}

// MB x rows against `count` consecutive weight rows: NB at a time, the ragged end by narrower
// tiles (same per-output arithmetic).
template <int MB, int NB>
inline void row_tile_over(const float* x, const float* w, int64_t K, int64_t count, float* y, int64_t ldy,
                          Prefetch& pf) {
  int64_t n = 0;
  for (; n + NB <= count; n += NB) tile<MB, NB>(x, w + n * K, K, y + n, ldy, pf);
  if constexpr (NB > 1) {
    if (n < count) row_tile_over<MB, NB - 1>(x, w + n * K, K, count - n, y + n, ldy, pf);
  }
}

// Tile width for MB x rows: MB * NB = 12 accumulators where possible, 8 for a single row.
template <int MB>
constexpr int tile_width() {
  return MB == 1 ? 8 : MB == 2 ? 6 : MB == 3 ? 4 : 3;
}

// MB x rows against a block of weight rows. `linear` (one or two x rows in the call: decode):
// one weight row at a time, a single linear stream that the hardware prefetcher follows at full
// speed, which is what a bandwidth-bound call needs (eight short row streams at once ran 12%
// slower with software prefetch, 50% without).
template <int MB>
inline void rows_over(const float* x, const float* w, int64_t K, int64_t count, float* y, int64_t ldy,
                      bool linear, Prefetch& pf) {
  if (MB <= 2 && linear) row_tile_over<MB, 1>(x, w, K, count, y, ldy, pf);
  else row_tile_over<MB, tile_width<MB>()>(x, w, K, count, y, ldy, pf);
}

}  // namespace

torch::Tensor skinny_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "skinny_linear: shapes");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "skinny_linear: fp32 only");
  x = x.contiguous();
  TORCH_CHECK(w.is_contiguous(), "skinny_linear: weight must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Weight rows per block: about 128 KB, so that the block stays in L2 (1 MB, beside x and the
  // next block) while every 4-row tile of x passes over it, and the weights come from DRAM once
  // per call; a multiple of 24 so that every tile width (3, 4, 6, 8) divides it.
  const int64_t budget = (128 * 1024) / (K * (int64_t)sizeof(float));
  const int64_t nblk = std::max<int64_t>(24, budget / 24 * 24);
  const int64_t blocks = (N + nblk - 1) / nblk;
  const char* w_end = reinterpret_cast<const char*>(wp + N * K);
  // Decode-like calls (M <= 2) stream linearly with no software prefetch (see rows_over); the
  // others prefetch the next block over the k steps of this block's passes of 4 x rows.
  const bool linear = M <= 2;
  const int64_t passes = (M + 3) / 4, steps = passes * ((nblk + 3) / 4) * (K / 8);
  const int64_t lines = (nblk * K * (int64_t)sizeof(float) + 63) / 64;
  const int64_t rate = linear || steps == 0 ? 0 : (lines + steps - 1) / steps;
  const int64_t every = rate == 1 ? std::max<int64_t>(1, steps / lines) : 1;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * nblk, count = std::min(nblk, N - n0);
      const float* wb = wp + n0 * K;
      Prefetch pf;
      pf.p = reinterpret_cast<const char*>(wb + count * K);
      pf.end = std::min(w_end, pf.p + nblk * K * (int64_t)sizeof(float));
      pf.rate = rate;
      pf.every = every;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) rows_over<4>(xp + m * K, wb, K, count, yp + m * N + n0, N, linear, pf);
      switch (M - m) {
        case 3: rows_over<3>(xp + m * K, wb, K, count, yp + m * N + n0, N, linear, pf); break;
        case 2: rows_over<2>(xp + m * K, wb, K, count, yp + m * N + n0, N, linear, pf); break;
        case 1: rows_over<1>(xp + m * K, wb, K, count, yp + m * N + n0, N, linear, pf); break;
        default: break;
      }
    }
  });
  return y;
}

namespace {

// GGUF weight blocks, read as they are stored (gguf-py's quants.py layouts): 32 weights a block,
// a row of K weights is K / 32 blocks. Q8_0: fp16 d, 32 int8 q; w = q * d. Q4_1: fp16 d, fp16 m,
// 16 bytes of nibbles (weight i < 16 the low nibble of byte i, weight 16 + i its high nibble);
// w = (d * q) + m. The loader dequantizes with these float operations (see dequant_chunk for the
// one fma that stands for a mul and an add, exactly), so a weight read here has the very bits of
// the fp32 checkpoint's.
// BF16 (not a GGUF kind: the shipped speculator heads' weights): 32 bfloat16 a block, no scale;
// w = the bf16 bits shifted into an fp32's high half, which is exactly the value torch's
// .to(float32) gives.
enum QuantKind : int64_t { Q8_0 = 0, Q4_1 = 1, BF16 = 2 };
constexpr int64_t QK = 32;

inline int64_t quant_block_bytes(int64_t kind) { return kind == Q8_0 ? 34 : kind == Q4_1 ? 20 : 64; }

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Weights 8c .. 8c + 7 of one block (c < 4), given its scale d and (Q4_1) offset m: the one
// place the loader's float operations are restated.
template <int64_t KIND>
__attribute__((always_inline)) inline __m256 dequant_chunk(const uint8_t* b, int c, __m256 d, __m256 m) {
  if constexpr (KIND == Q8_0) {
    const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * c));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), d);
  } else if constexpr (KIND == BF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * c));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {  // bytes 8 (c & 1) .. + 7: weights c = 0, 1 are their low nibbles, c = 2, 3 their high ones
    const __m256i bytes =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 4 + 8 * (c & 1))));
    const __m256i q = c < 2 ? _mm256_and_si256(bytes, _mm256_set1_epi32(0x0F)) : _mm256_srli_epi32(bytes, 4);
    // One fma for the loader's mul-then-add, and the same bits: d (an fp16 value, 11 significant
    // bits) times q (< 16, 4 bits) is exact in fp32's 24, so rounding it first changes nothing,
    // and both round d * q + m once.
    return _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q), m);
  }
}

// The 32 weights of one block into out[0, 32).
inline void dequant_block(int64_t kind, const uint8_t* b, float* out) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  if (kind == Q8_0) {
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + 8 * c, dequant_chunk<Q8_0>(b, c, d, d));
  } else if (kind == BF16) {
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + 8 * c, dequant_chunk<BF16>(b, c, d, d));
  } else {
    const __m256 m = _mm256_set1_ps(half_at(b + 2));
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + 8 * c, dequant_chunk<Q4_1>(b, c, d, m));
  }
}

// Rows [0, count) of a quantized weight (rows row_bytes apart) into w ([count, K] fp32).
inline void dequant_rows(int64_t kind, const uint8_t* src, int64_t row_bytes, int64_t count, int64_t K, float* w) {
  const int64_t bb = quant_block_bytes(kind), nb = K / QK;
  for (int64_t r = 0; r < count; ++r)
    for (int64_t j = 0; j < nb; ++j) dequant_block(kind, src + r * row_bytes + j * bb, w + r * K + j * QK);
}

void check_quantized(const torch::Tensor& w, int64_t kind, int64_t K, const char* what) {
  TORCH_CHECK(kind == Q8_0 || kind == Q4_1 || kind == BF16, what, ": kind must be 0 (Q8_0), 1 (Q4_1) or 2 (BF16)");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(), what,
              ": weight must be contiguous uint8 blocks [N, K / 32 * block bytes]");
  TORCH_CHECK(K % QK == 0 && w.size(1) == K / QK * quant_block_bytes(kind), what, ": K must be a multiple of 32 "
              "and each weight row K / 32 blocks");
}

// One register tile over quantized weights: y[i, j] = x[i] . dequant(w[j]) for i < MB, j < NB, the
// weights dequantized in registers block by block (each feeding MB rows) and accumulated exactly
// as tile() accumulates fp32 weights: the same fmas in the same k order, the same lane sums.
template <int64_t KIND, int MB, int NB>
__attribute__((always_inline)) inline void qtile(const float* x, const uint8_t* w, int64_t row_bytes, int64_t K,
                                                 float* y, int64_t ldy) {
  __m256 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t bb = quant_block_bytes(KIND);
  // NB rows read side by side are NB short streams, which the hardware prefetcher follows badly
  // (3x slower from DRAM): each block's line two tiles on is prefetched by hand.
  for (int64_t blk = 0; blk < K / QK; ++blk) {
    const uint8_t* src[NB];
    alignas(32) float d[NB], m[NB];
    for (int j = 0; j < NB; ++j) {
      src[j] = w + j * row_bytes + blk * bb;
      _mm_prefetch(reinterpret_cast<const char*>(src[j] + 2 * NB * row_bytes), _MM_HINT_T0);
      d[j] = half_at(src[j]);
      m[j] = KIND == Q4_1 ? half_at(src[j] + 2) : 0.f;
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {  // unrolled: c's nibble choice and offsets become constants
      __m256 wv[NB];
      for (int j = 0; j < NB; ++j)
        wv[j] = dequant_chunk<KIND>(src[j], c, _mm256_broadcast_ss(d + j), _mm256_broadcast_ss(m + j));
      const int64_t k = blk * QK + 8 * c;
      for (int i = 0; i < MB; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + i * K + k);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
  }
  store_sums<MB, NB>(acc, y, ldy);
}

// MB x rows against `count` quantized weight rows, NB at a time (the ragged end by narrower tiles).
template <int64_t KIND, int MB, int NB>
__attribute__((noinline)) void qrows_over(const float* x, const uint8_t* w, int64_t row_bytes, int64_t K,
                                          int64_t count, float* y, int64_t ldy) {
  int64_t n = 0;
  for (; n + NB <= count; n += NB) qtile<KIND, MB, NB>(x, w + n * row_bytes, row_bytes, K, y + n, ldy);
  if constexpr (NB > 1) {
    if (n < count) qrows_over<KIND, MB, NB - 1>(x, w + n * row_bytes, row_bytes, K, count - n, y + n, ldy);
  }
}

// Few x rows (at most 4: decode, short verify) against quantized weight rows, dequantized in
// registers: no pass through memory, which is what an M = 1 call spends most on.
template <int64_t KIND>
void few_rows_q(const float* x, int64_t M, const uint8_t* w, int64_t row_bytes, int64_t K, int64_t count, float* y,
                int64_t ldy) {
  switch (M) {
    case 1: qrows_over<KIND, 1, 4>(x, w, row_bytes, K, count, y, ldy); break;
    case 2: qrows_over<KIND, 2, 3>(x, w, row_bytes, K, count, y, ldy); break;
    case 3: qrows_over<KIND, 3, 2>(x, w, row_bytes, K, count, y, ldy); break;
    default: qrows_over<KIND, 4, 2>(x, w, row_bytes, K, count, y, ldy); break;
  }
}

// ---- AVX-512 (where the CPU has it): two outputs to a zmm register --------------------------
//
// A zmm accumulator holds two outputs' 8-lane accumulators side by side, [y[i, a] | y[i, b]] for
// weight rows a and b, and each k step is one fma of [x chunk | the same x chunk] against
// [w_a chunk | w_b chunk]. Lane by lane that is the very fma AVX2's tile does, in the same k order,
// and the halves are summed by the same lane tree: the same bits, with half the instructions per
// weight (and on CPUs with 512-bit units, such as Zen 5, half the cycles). With 32 registers all
// of up to 8 x rows fit one pass, so verifying 8 rows dequantizes each weight once, not twice.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The scales of blocks a and b as [d_a x8 | d_b x8] and (Q4_1) [m_a x8 | m_b x8].
__attribute__((always_inline)) inline void pair_scales(const uint8_t* a, const uint8_t* b, __m512& d, __m512& m) {
  const __m128i halves = _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)load_u32(a)), _mm_cvtsi32_si128((int)load_u32(b)));
  const __m512 f = _mm512_castps128_ps512(_mm_cvtph_ps(halves));  // d_a, m_a, d_b, m_b
  d = _mm512_permutexvar_ps(_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0), f);
  m = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1), f);
}

// [w_a chunk c | w_b chunk c] of blocks a and b: dequant_chunk's float operations, two rows at once.
// nib: Q4_1's nibble bytes of the chunk's half (bytes 8 (c & 1) .. + 7 of a, then of b).
template <int64_t KIND>
__attribute__((always_inline)) inline __m512 dequant_pair(const uint8_t* a, const uint8_t* b, int c, __m128i nib,
                                                          __m512 d, __m512 m) {
  if constexpr (KIND == BF16) {
    const __m256i h = _mm256_setr_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16 * c)),
                                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * c)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (KIND == Q8_0) {
    const __m128i q8 = _mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a + 2 + 8 * c)),
                                          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * c)));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8)), d);
  } else {
    const __m512i bytes = _mm512_cvtepu8_epi32(nib);
    const __m512i q = c < 2 ? _mm512_and_si512(bytes, _mm512_set1_epi32(0x0F)) : _mm512_srli_epi32(bytes, 4);
    return _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), m);  // exact, as in dequant_chunk
  }
}

// qtile with NP pairs of weight rows: y[i, j] for i < MB, j < 2 NP (j < 2 NP - 1 when `odd`: the
// last pair is the last row twice, and its copy is not stored).
template <int64_t KIND, int MB, int NP>
__attribute__((always_inline)) inline void qtile512(const float* x, const uint8_t* w, int64_t row_bytes, int64_t K,
                                                    float* y, int64_t ldy, bool odd) {
  __m512 acc[MB][NP];
  for (int i = 0; i < MB; ++i)
    for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
  const int64_t bb = quant_block_bytes(KIND), ahead = 2 * 2 * NP * row_bytes;
  for (int64_t blk = 0; blk < K / QK; ++blk) {
    const uint8_t* a[NP];
    const uint8_t* b[NP];
    __m512 d[NP], m[NP];
    __m128i lo[NP] = {}, hi[NP] = {};  // Q4_1: the nibble bytes of chunks 0 and 2, and of 1 and 3
    for (int p = 0; p < NP; ++p) {
      a[p] = w + 2 * p * row_bytes + blk * bb;
      b[p] = odd && p == NP - 1 ? a[p] : a[p] + row_bytes;
      _mm_prefetch(reinterpret_cast<const char*>(a[p] + ahead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b[p] + ahead), _MM_HINT_T0);
      pair_scales(a[p], b[p], d[p], m[p]);
      if constexpr (KIND == Q4_1) {
        const __m128i na = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a[p] + 4));
        const __m128i nb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[p] + 4));
        lo[p] = _mm_unpacklo_epi64(na, nb);
        hi[p] = _mm_unpackhi_epi64(na, nb);
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      __m512 wv[NP];
      for (int p = 0; p < NP; ++p) wv[p] = dequant_pair<KIND>(a[p], b[p], c, c & 1 ? hi[p] : lo[p], d[p], m[p]);
      const int64_t k = blk * QK + 8 * c;
      for (int i = 0; i < MB; ++i) {
        const __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + i * K + k));  // [x chunk | x chunk]
        for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_fmadd_ps(xv, wv[p], acc[i][p]);
      }
    }
  }
  __m256 halves[MB][2 * NP];
  for (int i = 0; i < MB; ++i)
    for (int p = 0; p < NP; ++p) {
      halves[i][2 * p] = _mm512_castps512_ps256(acc[i][p]);
      halves[i][2 * p + 1] = _mm512_extractf32x8_ps(acc[i][p], 1);
    }
  if (!odd) {
    store_sums<MB, 2 * NP>(halves, y, ldy);
  } else {
    float tmp[MB * 2 * NP];
    store_sums<MB, 2 * NP>(halves, tmp, 2 * NP);
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < 2 * NP - 1; ++j) y[i * ldy + j] = tmp[i * 2 * NP + j];
  }
}

// MB x rows against `count` quantized weight rows, 2 NP at a time (the ragged end by fewer pairs,
// an odd last row paired with itself).
template <int64_t KIND, int MB, int NP>
__attribute__((noinline)) void qrows512_over(const float* x, const uint8_t* w, int64_t row_bytes, int64_t K,
                                             int64_t count, float* y, int64_t ldy) {
  int64_t n = 0;
  for (; n + 2 * NP <= count; n += 2 * NP)
    qtile512<KIND, MB, NP>(x, w + n * row_bytes, row_bytes, K, y + n, ldy, false);
  const int64_t left = count - n;
  if (left == 0) return;
  if constexpr (NP > 1) {
    if (left >= 2) return qrows512_over<KIND, MB, NP - 1>(x, w + n * row_bytes, row_bytes, K, left, y + n, ldy);
  }
  qtile512<KIND, MB, 1>(x, w + n * row_bytes, row_bytes, K, y + n, ldy, true);  // one row left
}

// Any number of x rows up to 64: passes of up to 12 rows, each with NP pairs such that the MB x NP
// accumulators leave room for the operands (at most 24 of the 32 registers). Each pass dequantizes
// the weights again, and yet 64 rows in passes of 8 took 54 ms on SmolLM2's linears against 95 ms
// for dequantizing once into a buffer and running AVX2's fp32 tiles over it (Zen 5).
constexpr int64_t REGISTER_ROWS_512 = 64;

// Weight-row pairs per register tile for MB x rows: MB x NP accumulators of at most 24 registers.
template <int MB>
constexpr int pairs_for() {
  return MB <= 2 ? 4 : MB <= 8 ? 3 : 2;
}

// MB = M x rows (M <= 12) in one pass: the tile shape for MB rows, found by counting up to M.
template <int64_t KIND, int MB = 1>
void one_pass_q512(const float* x, int64_t M, const uint8_t* w, int64_t row_bytes, int64_t K, int64_t count,
                   float* y, int64_t ldy) {
  if (M == MB) return qrows512_over<KIND, MB, pairs_for<MB>()>(x, w, row_bytes, K, count, y, ldy);
  if constexpr (MB < 12) one_pass_q512<KIND, MB + 1>(x, M, w, row_bytes, K, count, y, ldy);
}

template <int64_t KIND>
void few_rows_q512(const float* x, int64_t M, const uint8_t* w, int64_t row_bytes, int64_t K, int64_t count,
                   float* y, int64_t ldy) {
  // passes of 8 rows while more than 12 remain, the last one (up to 12) in one
  for (; M > 12; M -= 8, x += 8 * K, y += 8 * ldy)
    qrows512_over<KIND, 8, pairs_for<8>()>(x, w, row_bytes, K, count, y, ldy);
  one_pass_q512<KIND>(x, M, w, row_bytes, K, count, y, ldy);
}

#pragma GCC pop_options

// Which instruction set the quantized kernels use: AVX-512 where the CPU has it, unless told
// otherwise (kernel_isa): a test or a benchmark compares both paths in one process.
enum Isa : int { ISA_AVX2 = 0, ISA_AVX512 = 1 };

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

int g_isa = -1;  // -1: not chosen yet

int active_isa() {
  if (g_isa < 0) g_isa = cpu_has_avx512() ? ISA_AVX512 : ISA_AVX2;
  return g_isa;
}

// MB x rows against `count` weight rows already in cache (the wide tiles). Not inlined: inlined
// into skinny_linear_q's loops, GCC spilled the tile's accumulators (half the speed).
template <int MB>
__attribute__((noinline)) void rows_over_cached(const float* x, const float* w, int64_t K, int64_t count, float* y,
                                                int64_t ldy) {
  Prefetch none;
  row_tile_over<MB, tile_width<MB>()>(x, w, K, count, y, ldy, none);
}

}  // namespace

// The fp32 weights a quantized one stands for: [N, K].
torch::Tensor dequantize(torch::Tensor w, int64_t kind, int64_t K) {
  check_quantized(w, kind, K, "dequantize");
  const int64_t N = w.size(0), row_bytes = w.size(1);
  auto out = torch::empty({N, K}, torch::TensorOptions().dtype(torch::kFloat));
  const uint8_t* src = w.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
    dequant_rows(kind, src + r0 * row_bytes, row_bytes, r1 - r0, K, dst + r0 * K);
  });
  return out;
}

// skinny_linear over quantized weights: y[m, n] = sum_k x[m, k] * dequant(w)[n, k], with the
// bits skinny_linear gives on the dequantized weights, for any number of rows. With AVX-512, up
// to 64 rows: dequantized in registers, two weight rows to a register (qtile512). With AVX2, up to
// 8 rows (decode, short verify): dequantized in registers (qtile); more: each L2-sized block of
// weight rows is dequantized once into a buffer and skinny_linear's own tiles run over it. Either
// way the weights come from DRAM once per call, at about a quarter (Q8_0) or a sixth (Q4_1) of
// fp32's bytes.
constexpr int64_t REGISTER_ROWS = 8;  // AVX2, more x rows: dequantizing once into a buffer is cheaper

torch::Tensor skinny_linear_q(torch::Tensor x, torch::Tensor w, int64_t kind) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "skinny_linear_q: x must be fp32 [M, K]");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  check_quantized(w, kind, K, "skinny_linear_q");
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const int64_t row_bytes = w.size(1);
  const int64_t nblk = std::max<int64_t>(24, (128 * 1024) / (K * (int64_t)sizeof(float)) / 24 * 24);
  const int64_t blocks = (N + nblk - 1) / nblk;
  const int isa = active_isa();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t first = b0 * nblk, end = std::min(N, b1 * nblk);
    if (M <= REGISTER_ROWS_512 && isa == ISA_AVX512) {
      for (int64_t n0 = first; n0 < end; n0 += nblk) {
        const int64_t count = std::min(nblk, end - n0);
        if (kind == Q8_0) few_rows_q512<Q8_0>(xp, M, wp + n0 * row_bytes, row_bytes, K, count, yp + n0, N);
        else if (kind == Q4_1) few_rows_q512<Q4_1>(xp, M, wp + n0 * row_bytes, row_bytes, K, count, yp + n0, N);
        else few_rows_q512<BF16>(xp, M, wp + n0 * row_bytes, row_bytes, K, count, yp + n0, N);
      }
      return;
    }
    if (M <= REGISTER_ROWS) {  // passes of up to 4 x rows over each block (from L2 after the first)
      for (int64_t n0 = first; n0 < end; n0 += nblk) {
        const int64_t count = std::min(nblk, end - n0);
        for (int64_t m = 0; m < M; m += 4) {
          const int64_t rows = std::min<int64_t>(4, M - m);
          const uint8_t* wb = wp + n0 * row_bytes;
          float* yb = yp + m * N + n0;
          if (kind == Q8_0) few_rows_q<Q8_0>(xp + m * K, rows, wb, row_bytes, K, count, yb, N);
          else if (kind == Q4_1) few_rows_q<Q4_1>(xp + m * K, rows, wb, row_bytes, K, count, yb, N);
          else few_rows_q<BF16>(xp + m * K, rows, wb, row_bytes, K, count, yb, N);
        }
      }
      return;
    }
    // 64-byte aligned (a std::vector's 16 would split every other 32-byte load across two lines)
    std::vector<float> storage(nblk * K + 16);
    float* const buf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
    for (int64_t n0 = first; n0 < end; n0 += nblk) {
      const int64_t count = std::min(nblk, end - n0);
      dequant_rows(kind, wp + n0 * row_bytes, row_bytes, count, K, buf);
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) rows_over_cached<4>(xp + m * K, buf, K, count, yp + m * N + n0, N);
      switch (M - m) {
        case 3: rows_over_cached<3>(xp + m * K, buf, K, count, yp + m * N + n0, N); break;
        case 2: rows_over_cached<2>(xp + m * K, buf, K, count, yp + m * N + n0, N); break;
        case 1: rows_over_cached<1>(xp + m * K, buf, K, count, yp + m * N + n0, N); break;
        default: break;
      }
    }
  });
  return y;
}

namespace {

// exp(x) lane by lane: Cephes' expf (Cody-Waite reduction, degree-5 polynomial, about 1 ulp),
// so a softmax over thousands of slots does not go through scalar expf. Lanes are independent.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
  const __m256 fx =
      _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}

// One (row, head)'s softmax numerators, in place. On entry s[lo, hi) holds the raw scores q . k
// (lo, hi: the ends of the visible runs [runs[2j], runs[2j+1]); vis: the mask row, or null when
// [lo, hi) is all visible). On return s holds exp(scale * score - max) on visible slots and 0 on
// hidden ones over the whole 8-slot blocks around [lo, hi), and the function returns the sum of
// the visible numerators. That sum must not depend on where the visible slots sit (a tree node's
// ancestors are scattered slots, the same tokens decoded as a chain are consecutive ones), only
// on their values in slot order: so the visible numerators are packed first, then summed in 8
// lanes (lane = position in the packed sequence % 8, zero-padded) and the fixed lane tree.
// Not inlined: every (row, head) runs the very same instructions.
__attribute__((noinline)) float softmax_row(float* s, const bool* vis, const int64_t* runs, int64_t nruns,
                                            float scale, float* packed) {
  const int64_t lo = runs[0], hi = runs[2 * nruns - 1];
  const int64_t b0 = lo & ~int64_t(7), b1 = (hi + 7) & ~int64_t(7);
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY), sv = _mm256_set1_ps(scale);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lo_v = _mm256_set1_epi32((int)(lo - b0)), hi_v = _mm256_set1_epi32((int)(hi - b0));
  __m256 mx = neg_inf;
  for (int64_t t = b0; t < b1; t += 8) {  // scale; -inf on hidden slots and outside [lo, hi)
    const __m256i idx = _mm256_add_epi32(lanes, _mm256_set1_epi32((int)(t - b0)));
    __m256i keep = _mm256_andnot_si256(_mm256_cmpgt_epi32(lo_v, idx), _mm256_cmpgt_epi32(hi_v, idx));
    if (vis) {
      int64_t bytes = 0;  // the mask row ends at hi at the latest: never read past it
      std::memcpy(&bytes, vis + std::max(t, lo), std::min<int64_t>(t + 8, hi) - std::max(t, lo));
      if (t < lo) bytes <<= 8 * (lo - t);
      const __m256i m = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
      keep = _mm256_and_si256(keep, _mm256_cmpgt_epi32(m, _mm256_setzero_si256()));
    }
    const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(s + t), sv);
    const __m256 x = _mm256_blendv_ps(neg_inf, scaled, _mm256_castsi256_ps(keep));
    _mm256_storeu_ps(s + t, x);
    mx = _mm256_max_ps(mx, x);
  }
  alignas(32) float m8[8];
  _mm256_store_ps(m8, mx);
  float m = m8[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, m8[i]);  // exact in any order
  const __m256 mv = _mm256_set1_ps(m);
  for (int64_t t = b0; t < b1; t += 8) {
    const __m256 x = _mm256_loadu_ps(s + t);
    const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(x, mv)), _mm256_cmp_ps(x, neg_inf, _CMP_NEQ_OQ));
    _mm256_storeu_ps(s + t, e);
  }
  int64_t n = 0;
  for (int64_t j = 0; j < nruns; ++j) {
    std::memcpy(packed + n, s + runs[2 * j], (runs[2 * j + 1] - runs[2 * j]) * sizeof(float));
    n += runs[2 * j + 1] - runs[2 * j];
  }
  for (int64_t t = n; t < ((n + 7) & ~int64_t(7)); ++t) packed[t] = 0.f;
  __m256 sum = _mm256_setzero_ps();
  for (int64_t t = 0; t < n; t += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(packed + t));
  const __m256 zero = _mm256_setzero_ps();
  return _mm_cvtss_f32(hsum4(sum, zero, zero, zero));
}

// acc[i][c] += p[i, s] * v[s, 8c:8c+8] for s in [s0, s1), in slot order. The accumulators are
// copied into locals for the loop: left in the caller's array, GCC kept them in memory (the
// __m256 type may alias the float loads) and stored all of them on every slot.
template <int R, int DC>
__attribute__((always_inline)) inline void pv_run(__m256 (&acc)[R][DC], const float* p, int64_t ldp,
                                                  const float* vb, int64_t D, int64_t s0, int64_t s1) {
  __m256 a[R][DC];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < DC; ++c) a[i][c] = acc[i][c];
  for (int64_t s = s0; s < s1; ++s) {
    __m256 pb[R];
    for (int i = 0; i < R; ++i) pb[i] = _mm256_broadcast_ss(p + i * ldp + s);
    const float* vr = vb + s * D;
    for (int c = 0; c < DC; ++c) {
      const __m256 vv = _mm256_loadu_ps(vr + c * 8);
      for (int i = 0; i < R; ++i) a[i][c] = _mm256_fmadd_ps(pb[i], vv, a[i][c]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < DC; ++c) acc[i][c] = a[i][c];
}

// out[i, :8*DC] = inv[i] * sum over visible slots s, in slot order, of p[i, s] * v[s, :8*DC], for
// R heads that share one KV head and one query row (so one mask row): each V row is loaded once
// for all R heads. The visible slots come as runs [runs[2j], runs[2j+1]); hidden slots are
// skipped, so per output lane the fma sequence is the same for any R, DC or other rows' masks.
template <int R, int DC>
inline void pv_chunk(const float* p, int64_t ldp, const float* vb, int64_t D, const int64_t* runs, int64_t nruns,
                     const float* inv, float* out) {
  __m256 acc[R][DC];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < DC; ++c) acc[i][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < nruns; ++j) pv_run<R, DC>(acc, p, ldp, vb, D, runs[2 * j], runs[2 * j + 1]);
  for (int i = 0; i < R; ++i) {
    const __m256 sc = _mm256_set1_ps(inv[i]);
    for (int c = 0; c < DC; ++c) _mm256_storeu_ps(out + i * D + c * 8, _mm256_mul_ps(acc[i][c], sc));
  }
}

// The head dimension (nvec vectors of 8) in chunks of DC vectors, the rest by narrower chunks.
template <int R, int DC>
inline void pv(const float* p, int64_t ldp, const float* vb, int64_t D, const int64_t* runs, int64_t nruns,
               const float* inv, float* out, int64_t nvec) {
  int64_t c = 0;
  for (; c + DC <= nvec; c += DC) pv_chunk<R, DC>(p, ldp, vb + c * 8, D, runs, nruns, inv, out + c * 8);
  if constexpr (DC > 1) {
    if (c < nvec) pv<R, DC - 1>(p, ldp, vb + c * 8, D, runs, nruns, inv, out + c * 8, nvec - c);
  }
}

// Attention of R query heads of one row (q: R rows D apart) over one KV head's cache kb, vb
// ([S, D]) at slots < kv_len visible under vis (null: all). sc: scratch, R rows ldp apart;
// packed: scratch of ldp floats; runs: scratch for the visible runs.
template <int R>
void attend_heads(const float* q, const float* kb, const float* vb, const bool* vis, int64_t kv_len, int64_t D,
                  float scale, float* sc, int64_t ldp, float* packed, std::vector<int64_t>& runs, float* out) {
  runs.clear();
  if (vis) {
    for (int64_t s = 0; s < kv_len;) {
      const bool* start = static_cast<const bool*>(std::memchr(vis + s, 1, kv_len - s));
      if (!start) break;
      const int64_t s0 = start - vis;
      const bool* stop = static_cast<const bool*>(std::memchr(start, 0, kv_len - s0));
      const int64_t s1 = stop ? stop - vis : kv_len;
      runs.push_back(s0);
      runs.push_back(s1);
      s = s1;
    }
  } else if (kv_len > 0) {
    runs.push_back(0);
    runs.push_back(kv_len);
  }
  if (runs.empty()) {  // nothing visible: NaN, as softmax over an empty set (and SDPA) gives
    std::fill(out, out + R * D, NAN);
    return;
  }
  const int64_t lo = runs.front(), hi = runs.back();  // slots outside [lo, hi) are never touched
  // Scores by skinny_linear's tiles (q rows against key rows): each score's arithmetic is fixed.
  Prefetch none;
  row_tile_over<R, tile_width<R>()>(q, kb + lo * D, D, hi - lo, sc + lo, ldp, none);
  float inv[R];
  const int64_t nruns = (int64_t)runs.size() / 2;
  for (int i = 0; i < R; ++i) inv[i] = 1.f / softmax_row(sc + i * ldp, vis, runs.data(), nruns, scale, packed);
  pv<R, (R == 1 ? 8 : 4)>(sc, ldp, vb, D, runs.data(), nruns, inv, out, D / 8);  // <= 12 accumulators
}

}  // namespace

// Attention of several sequences' new tokens in one call (a batch in the flattened layout; one
// sequence's rows are `attend` below). Work items are one token and up to 3 query heads of one
// KV head, so each K and V row read serves all of them (single heads when there are too few items
// to keep two threads busy: decode; the grouping never changes a (token, head)'s arithmetic). Token
// t is a row of sequence rows[t], whose cache is k[rows[t]], v[rows[t]] ([B, Hkv, S, D]), and sees
// its slots < kv_lens[t] under mask row t (mask: [N, W] bool with W >= every kv_len, or empty:
// all of them). Each (token, head) runs attend_heads exactly as `attend` runs it for that
// sequence alone, so a sequence's outputs do not depend on the others in the batch. The tokens of
// one sequence are consecutive; work items go sequence by sequence, KV head by KV head, so one
// sequence's head stays in L2 across its tokens. Returns [N, H, D].
torch::Tensor attend_rows(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rows, torch::Tensor kv_lens,
                          torch::Tensor mask, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4, "attend_rows: shapes");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "attend_rows: fp32 only");
  TORCH_CHECK(rows.scalar_type() == at::kLong && kv_lens.scalar_type() == at::kLong && rows.is_contiguous() &&
                  kv_lens.is_contiguous(), "attend_rows: rows and kv_lens must be contiguous int64");
  q = q.contiguous();
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "attend_rows: cache must be contiguous");
  const int64_t N = q.size(0), H = q.size(1), D = q.size(2), B = k.size(0), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(H % Hkv == 0 && D % 8 == 0 && v.sizes() == k.sizes() && k.size(3) == D && rows.numel() == N &&
                  kv_lens.numel() == N, "attend_rows: bad sizes");
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* lp = kv_lens.data_ptr<int64_t>();
  int64_t max_len = 0;
  for (int64_t t = 0; t < N; ++t) {
    TORCH_CHECK(rp[t] >= 0 && rp[t] < B && lp[t] >= 0 && lp[t] <= S, "attend_rows: row or kv_len out of range");
    max_len = std::max(max_len, lp[t]);
  }
  const bool has_mask = mask.numel() > 0;
  const int64_t W = has_mask ? mask.size(1) : 0;
  if (has_mask) TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == N && W >= max_len &&
                            mask.is_contiguous(), "attend_rows: mask must be contiguous bool [N, >= kv_len]");
  auto out = torch::empty({N, H, D}, q.options());
  if (N == 0) return out;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* mp = has_mask ? mask.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  const int64_t hb = N * Hkv >= 8 ? std::min<int64_t>(group, 3) : 1;  // as in attend: arithmetic unchanged
  const int64_t chunks = (group + hb - 1) / hb;
  std::vector<int64_t> items;  // (t, kh, c) packed, sequence by sequence, KV head by KV head
  items.reserve(N * Hkv * chunks * 3);
  for (int64_t t0 = 0; t0 < N;) {
    int64_t t1 = t0 + 1;
    while (t1 < N && rp[t1] == rp[t0]) ++t1;
    for (int64_t kh = 0; kh < Hkv; ++kh)
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t c = 0; c < chunks; ++c) items.insert(items.end(), {t, kh, c});
    t0 = t1;
  }
  const int64_t ldp = ((max_len + 7) & ~int64_t(7)) + 8;
  at::parallel_for(0, (int64_t)items.size() / 3, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(4 * ldp);
    float* scores = scratch.data();
    float* packed = scores + 3 * ldp;
    std::vector<int64_t> runs;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = items[3 * i], kh = items[3 * i + 1], c = items[3 * i + 2];
      const int64_t h0 = kh * group + c * hb, r = std::min(hb, group - c * hb);
      const int64_t kv_len = lp[t];
      float* orow = op + (t * H + h0) * D;
      if (kv_len == 0) {
        std::fill(orow, orow + r * D, NAN);
        continue;
      }
      const float* qr = qp + (t * H + h0) * D;
      const float* kb = kp + (rp[t] * Hkv + kh) * S * D;
      const float* vb = vp + (rp[t] * Hkv + kh) * S * D;
      const bool* vis = has_mask ? mp + t * W : nullptr;
      const float sc = (float)scale;
      switch (r) {
        case 3: attend_heads<3>(qr, kb, vb, vis, kv_len, D, sc, scores, ldp, packed, runs, orow); break;
        case 2: attend_heads<2>(qr, kb, vb, vis, kv_len, D, sc, scores, ldp, packed, runs, orow); break;
        default: attend_heads<1>(qr, kb, vb, vis, kv_len, D, sc, scores, ldp, packed, runs, orow); break;
      }
    }
  });
  return out;
}

// Attention of few query rows over the KV cache, fp32, batch-invariant: each (row, head) gets
// its scores, max, softmax denominator and value sum in a fixed order over its visible slots,
// whatever the other rows of the call are (see attend_heads). One sequence's case of
// attend_rows. q: [T, H, D]; k, v: [Hkv, S, D] (S >= kv_len); mask: [T, kv_len] bool or empty
// (every slot < kv_len visible). Returns [T, H, D].
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask, int64_t kv_len,
                     double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attend: shapes");
  TORCH_CHECK(kv_len <= k.size(1), "attend: bad sizes");
  if (mask.numel() > 0)
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == q.size(0) && mask.size(1) == kv_len,
                "attend: mask must be contiguous bool [T, kv_len]");
  const auto opts = torch::TensorOptions().dtype(torch::kLong);
  return attend_rows(q, k.unsqueeze(0), v.unsqueeze(0), torch::zeros({q.size(0)}, opts),
                     torch::full({q.size(0)}, kv_len, opts), mask, scale);
}

// The quantized kernels' instruction set: "avx512" or "avx2" to choose one (one the CPU lacks is
// refused), "" to ask. Returns the one in use.
std::string kernel_isa(const std::string& name) {
  if (name == "avx2") {
    g_isa = ISA_AVX2;
  } else if (name == "avx512") {
    TORCH_CHECK(cpu_has_avx512(), "kernel_isa: this CPU has no AVX-512 (F, BW, DQ, VL)");
    g_isa = ISA_AVX512;
  } else {
    TORCH_CHECK(name.empty(), "kernel_isa: avx512, avx2 or \"\" (ask), not ", name);
  }
  return active_isa() == ISA_AVX512 ? "avx512" : "avx2";
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("kernel_isa", &kernel_isa, "the quantized kernels' instruction set: set avx512 / avx2, or ask with \"\"");
  m.def("skinny_linear", &skinny_linear, "x @ w.T for few rows, fp32, batch-invariant");
  m.def("skinny_linear_q", &skinny_linear_q, "skinny_linear over Q8_0 / Q4_1 / BF16 weight blocks, the same bits");
  m.def("dequantize", &dequantize, "Q8_0 / Q4_1 / BF16 weight blocks as fp32, the loader's bits");
  m.def("attend", &attend, "few-row attention over a KV cache, fp32, batch-invariant");
  m.def("attend_rows", &attend_rows, "attention of several sequences' rows over their caches, fp32, batch-invariant");
}

// y[m, n] = sum_k x[m, k] * w[n, k] for few rows m (decode and verify), fp32, AVX2 + FMA.
//
// Each weight row is read from memory once and used for every x row, so k + 1 verify rows cost
// about what one decode row costs (the weights, not the arithmetic, are the bound). Every
// output element is summed in the same order whatever M is, so a token's logits do not depend
// on how many tokens share the call: verify logits equal decode logits bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

// Dot products of one weight row with up to 4 x rows; two accumulators per x row.
template <int MB>
inline void rows_dot(const float* w, const float* x, int64_t K, int64_t ldx, float* out, int64_t ldo) {
  __m256 a0[MB], a1[MB];
  for (int b = 0; b < MB; ++b) { a0[b] = _mm256_setzero_ps(); a1[b] = _mm256_setzero_ps(); }
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m256 w0 = _mm256_loadu_ps(w + k);
    __m256 w1 = _mm256_loadu_ps(w + k + 8);
    for (int b = 0; b < MB; ++b) {
      a0[b] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + b * ldx + k), a0[b]);
      a1[b] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + b * ldx + k + 8), a1[b]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    __m256 w0 = _mm256_loadu_ps(w + k);
    for (int b = 0; b < MB; ++b) a0[b] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + b * ldx + k), a0[b]);
  }
  for (int b = 0; b < MB; ++b) {
    float s = hsum(_mm256_add_ps(a0[b], a1[b]));
    for (int64_t t = k; t < K; ++t) s += w[t] * x[b * ldx + t];
    out[b * ldo] = s;
  }
}

}  // namespace

torch::Tensor skinny_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "skinny_linear: shapes");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "skinny_linear: fp32 only");
  x = x.contiguous();
  TORCH_CHECK(w.is_contiguous(), "skinny_linear: weight must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* wr = wp + n * K;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) rows_dot<4>(wr, xp + m * K, K, K, yp + m * N + n, N);
      switch (M - m) {
        case 3: rows_dot<3>(wr, xp + m * K, K, K, yp + m * N + n, N); break;
        case 2: rows_dot<2>(wr, xp + m * K, K, K, yp + m * N + n, N); break;
        case 1: rows_dot<1>(wr, xp + m * K, K, K, yp + m * N + n, N); break;
        default: break;
      }
    }
  });
  return y;
}

// Attention of few query rows over the KV cache, fp32. Each (head, row) is computed alone:
// scores in cache order, a max, exp-sum and value sum in cache order over the visible slots,
// so a row's result does not depend on the other rows in the call (batch-invariant, like
// skinny_linear). q: [T, H, D]; k, v: [Hkv, S, D] (S >= kv_len); mask: [T, kv_len] bool or
// empty (every slot < kv_len visible). Returns [T, H, D].
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask, int64_t kv_len,
                     double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attend: shapes");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat, "attend: fp32 only");
  q = q.contiguous();
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "attend: cache must be contiguous");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(0), S = k.size(1);
  TORCH_CHECK(kv_len <= S && H % Hkv == 0 && D % 8 == 0, "attend: bad sizes");
  const bool has_mask = mask.numel() > 0;
  if (has_mask) TORCH_CHECK(mask.scalar_type() == at::kBool && mask.size(0) == T && mask.size(1) == kv_len &&
                            mask.is_contiguous(), "attend: mask must be contiguous bool [T, kv_len]");
  auto out = torch::empty({T, H, D}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* mp = has_mask ? mask.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t group = H / Hkv;
  at::parallel_for(0, T * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(kv_len);
    std::vector<__m256> acc(D / 8);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / H, h = i % H, kh = h / group;
      const float* qr = qp + (t * H + h) * D;
      const float* kb = kp + kh * S * D;
      const float* vb = vp + kh * S * D;
      const bool* mr = has_mask ? mp + t * kv_len : nullptr;
      float mx = -INFINITY;
      for (int64_t s = 0; s < kv_len; ++s) {
        if (mr && !mr[s]) continue;
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8)
          a = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), _mm256_loadu_ps(kb + s * D + d), a);
        float sc = hsum(a) * (float)scale;
        scores[s] = sc;
        mx = std::max(mx, sc);
      }
      for (auto& a : acc) a = _mm256_setzero_ps();
      float denom = 0.f;
      for (int64_t s = 0; s < kv_len; ++s) {
        if (mr && !mr[s]) continue;
        const float p = std::exp(scores[s] - mx);
        denom += p;
        const __m256 pv = _mm256_set1_ps(p);
        for (int64_t d = 0; d < D; d += 8)
          acc[d / 8] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vb + s * D + d), acc[d / 8]);
      }
      const __m256 inv = _mm256_set1_ps(1.f / denom);
      float* orow = op + (t * H + h) * D;
      for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(orow + d, _mm256_mul_ps(acc[d / 8], inv));
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("skinny_linear", &skinny_linear, "x @ w.T for few rows, fp32, batch-invariant");
  m.def("attend", &attend, "few-row attention over a KV cache, fp32, batch-invariant");
}

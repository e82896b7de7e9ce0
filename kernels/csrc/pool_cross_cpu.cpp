// CPU path of pool_cross in C++: attention pooling, optional projection, cos or res crossing.
// Forward only (training on CPU takes the TorchScript path, which autograd runs through).
// The crossing's matrix products go to ATen (MKL); everything between them is one fused pass
// over the rows, so the op pays for its GEMMs and little else. Maths: kernels/pool_cross.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

// Hot loops built for AVX-512, AVX2 and the baseline; the loader picks the one this CPU runs.
#define TB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

TB_CLONES float tb_dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

TB_CLONES void tb_dot_sumsq(const float* q, const float* k, int64_t n, float* dot, float* sumsq) {
  float d = 0.f, s = 0.f;
#pragma omp simd reduction(+ : d, s)
  for (int64_t i = 0; i < n; ++i) {
    d += q[i] * k[i];
    s += k[i] * k[i];
  }
  *dot = d;
  *sumsq = s;
}

TB_CLONES void tb_axpy(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

TB_CLONES void tb_max(const float* a, const float* b, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] > b[i] ? a[i] : b[i];
}

TB_CLONES void tb_relu(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] > 0.f ? x[i] : 0.f;
}

// u . relu(y + x): the residual, the activation and the final product in one pass
TB_CLONES float tb_res_tail(const float* y, const float* x, const float* u, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float v = y[i] + x[i];
    s += u[i] * (v > 0.f ? v : 0.f);
  }
  return s;
}

namespace {

constexpr float kCosEps = 1e-8f;
constexpr int64_t kResBlock = 512;  // query-keyword pairs per res block: temporaries stay in cache

inline float sigmoid(float z) { return 1.f / (1.f + std::exp(-z)); }

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// A one-element parameter as a float, without a dispatched item() call when it already is one.
float scalar(const at::Tensor& t) {
  TORCH_CHECK(t.numel() == 1, "scalar parameters must have one element");
  return t.scalar_type() == at::kFloat ? *t.data_ptr<float>() : t.item<float>();
}

// Scratch matrices kept per thread across calls: a fresh [512, 384] float block is large enough
// for malloc to map new pages on every call, and faulting them in cost about a fifth of a B = 1
// res crossing. Always allocated as normal tensors: one made under torch.inference_mode() would
// refuse the in-place writes of a later call made outside it (evaluation, then a training step).
at::Tensor scratch(size_t slot, int64_t rows, int64_t cols) {
  thread_local std::vector<at::Tensor> held(3);
  at::Tensor& t = held[slot];
  if (!t.defined() || t.numel() < rows * cols) {
    c10::InferenceMode normal(false);
    t = at::empty({rows * cols}, at::kFloat);
  }
  return t.narrow(0, 0, rows * cols).view({rows, cols});
}

// e[b] = sum_l softmax_l(v . t[b, l] + bias) t[b, l] over real tokens; all padding -> zeros
void pool_rows(const float* t, const float* mask, const float* v, float bias, int64_t B, int64_t L, int64_t H,
               float* e) {
  at::parallel_for(0, B, 8, [&](int64_t lo, int64_t hi) {
    std::vector<float> w(L);
    for (int64_t r = lo; r < hi; ++r) {
      const float* tr = t + r * L * H;
      const float* mr = mask + r * L;
      float* er = e + r * H;
      std::fill(er, er + H, 0.f);
      float top = -INFINITY;
      for (int64_t l = 0; l < L; ++l) {
        if (mr[l] != 0.f) {
          w[l] = tb_dot(tr + l * H, v, H) + bias;
          top = std::max(top, w[l]);
        }
      }
      if (top == -INFINITY) continue;
      float sum = 0.f;
      for (int64_t l = 0; l < L; ++l) {
        w[l] = mr[l] != 0.f ? std::exp(w[l] - top) : 0.f;
        sum += w[l];
      }
      for (int64_t l = 0; l < L; ++l)
        if (w[l] != 0.f) tb_axpy(w[l] / sum, tr + l * H, er, H);
    }
  });
}

void cross_cos(const at::Tensor& q, const at::Tensor& k, float w, float b, const at::Tensor& s_out) {
  const int64_t B = q.size(0), D = q.size(1);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  float* sp = s_out.data_ptr<float>();
  std::vector<float> q_inv(B);
  for (int64_t r = 0; r < B; ++r) q_inv[r] = 1.f / std::max(std::sqrt(tb_dot(qp + r * D, qp + r * D, D)), kCosEps);
  if (k.dim() == 2) {  // shared keywords: one GEMM for the dot products, norms once per keyword
    const int64_t N = k.size(0);
    at::mm_out(const_cast<at::Tensor&>(s_out), q, k.t());
    std::vector<float> k_inv(N);
    at::parallel_for(0, N, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j)
        k_inv[j] = 1.f / std::max(std::sqrt(tb_dot(kp + j * D, kp + j * D, D)), kCosEps);
    });
    at::parallel_for(0, B * N, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) sp[i] = sigmoid(w * (sp[i] * q_inv[i / N] * k_inv[i % N]) + b);
    });
    return;
  }
  const int64_t K = k.size(1);  // per-query keywords: dot product and norm in one pass over each row
  at::parallel_for(0, B * K, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      float dot, sumsq;
      tb_dot_sumsq(qp + (i / K) * D, kp + i * D, D, &dot, &sumsq);
      sp[i] = sigmoid(w * (dot * q_inv[i / K] / std::max(std::sqrt(sumsq), kCosEps)) + b);
    }
  });
}

void cross_res(const at::Tensor& q, const at::Tensor& k, const at::Tensor& w1, const at::Tensor& w2,
               const at::Tensor& u, float c, const at::Tensor& s_out) {
  const int64_t B = q.size(0), D = q.size(1), R = w1.size(0);
  const bool shared = k.dim() == 2;
  const int64_t K = shared ? k.size(0) : k.size(1), M = B * K;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  float* sp = s_out.data_ptr<float>();
  const int64_t cap = std::min(M, kResBlock);
  at::Tensor xb = scratch(0, cap, D), hb = scratch(1, cap, R), yb = scratch(2, cap, D);
  const at::Tensor w1t = w1.t(), w2t = w2.t();
  for (int64_t start = 0; start < M; start += kResBlock) {
    const int64_t m = std::min(kResBlock, M - start);
    at::Tensor x = xb.narrow(0, 0, m), h = hb.narrow(0, 0, m), y = yb.narrow(0, 0, m);
    float* xp = x.data_ptr<float>();
    at::parallel_for(0, m, 128, [&](int64_t lo, int64_t hi) {  // x = max(q, k)
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t g = start + r;
        tb_max(qp + (g / K) * D, kp + (shared ? g % K : g) * D, xp + r * D, D);
      }
    });
    at::mm_out(h, x, w1t);
    float* hp = h.data_ptr<float>();
    at::parallel_for(0, m, 128, [&](int64_t lo, int64_t hi) { tb_relu(hp + lo * R, (hi - lo) * R); });
    at::mm_out(y, h, w2t);
    const float* yp = y.data_ptr<float>();
    at::parallel_for(0, m, 128, [&](int64_t lo, int64_t hi) {  // s = sigmoid(u . relu(y + x) + c)
      for (int64_t r = lo; r < hi; ++r) sp[start + r] = sigmoid(tb_res_tail(yp + r * D, xp + r * D, up, D) + c);
    });
  }
}

void pool_cross_out(const at::Tensor& token_states, const at::Tensor& mask, const at::Tensor& pool_v,
                    const at::Tensor& pool_b, const c10::optional<at::Tensor>& proj_w,
                    const c10::optional<at::Tensor>& proj_b, const c10::optional<at::Tensor>& keywords,
                    int64_t crossing, const at::Tensor& cos_w, const at::Tensor& cos_b,
                    const c10::optional<at::Tensor>& res_w1, const c10::optional<at::Tensor>& res_w2,
                    const c10::optional<at::Tensor>& res_u, const at::Tensor& res_c, const at::Tensor& q_out,
                    const at::Tensor& s_out) {
  TORCH_CHECK(token_states.device().is_cpu(), "pool_cross_out is the CPU path");
  TORCH_CHECK(token_states.dim() == 3 && mask.dim() == 2 && mask.size(0) == token_states.size(0) &&
                  mask.size(1) == token_states.size(1),
              "token_states must be [B, L, H] and mask [B, L]");
  const at::Tensor t = f32(token_states), m = f32(mask), v = f32(pool_v);
  const int64_t B = t.size(0), L = t.size(1), H = t.size(2);
  TORCH_CHECK(v.numel() == H, "pool_v must have H = ", H, " elements");
  TORCH_CHECK(!proj_w || (proj_w->dim() == 2 && proj_w->size(1) == H), "proj_w must be [D, H = ", H, "]");
  const int64_t D = proj_w ? proj_w->size(0) : H;
  TORCH_CHECK(!proj_w || !proj_b || (proj_b->dim() == 1 && proj_b->size(0) == D), "proj_b must be [D = ", D, "]");
  TORCH_CHECK(q_out.scalar_type() == at::kFloat && q_out.is_contiguous() && q_out.size(0) == B && q_out.size(1) == D,
              "q_out must be a contiguous float32 [B, D] tensor");
  TORCH_CHECK(s_out.scalar_type() == at::kFloat && s_out.is_contiguous() && s_out.dim() == 2 && s_out.size(0) == B,
              "s_out must be a contiguous float32 [B, K] tensor");
  if (B == 0) return;
  at::Tensor e = proj_w ? at::empty({B, H}, t.options()) : q_out;
  pool_rows(t.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(), scalar(pool_b), B, L, H,
            e.data_ptr<float>());
  if (proj_w) {
    at::Tensor& out = const_cast<at::Tensor&>(q_out);
    if (proj_b) at::addmm_out(out, f32(*proj_b), e, f32(*proj_w).t());
    else at::mm_out(out, e, f32(*proj_w).t());
    out.tanh_();
  }
  if (!keywords || keywords->size(-2) == 0) return;
  const at::Tensor k = f32(*keywords);
  TORCH_CHECK((k.dim() == 2 || (k.dim() == 3 && k.size(0) == B)) && k.size(-1) == D,
              "keywords must be [B, K, D] or [N, D]");
  TORCH_CHECK(s_out.size(1) == k.size(-2), "s_out must be [B, K]");
  if (crossing == 0) {
    cross_cos(q_out, k, scalar(cos_w), scalar(cos_b), s_out);
  } else {
    TORCH_CHECK(res_w1 && res_w2 && res_u, "res crossing needs res_w1, res_w2 and res_u");
    // read through raw pointers below: a short res_u or a narrower W would be read past its end
    TORCH_CHECK(res_w1->dim() == 2 && res_w1->size(1) == D && res_w2->dim() == 2 && res_w2->size(0) == D &&
                    res_w2->size(1) == res_w1->size(0) && res_u->numel() == D,
                "res parameters must be res_w1 [R, D], res_w2 [D, R] and res_u [D] with D = ", D);
    cross_res(q_out, k, f32(*res_w1), f32(*res_w2), f32(*res_u), scalar(res_c), s_out);
  }
}

std::tuple<at::Tensor, at::Tensor> pool_cross(
    const at::Tensor& token_states, const at::Tensor& mask, const at::Tensor& pool_v, const at::Tensor& pool_b,
    const c10::optional<at::Tensor>& proj_w, const c10::optional<at::Tensor>& proj_b,
    const c10::optional<at::Tensor>& keywords, int64_t crossing, const at::Tensor& cos_w, const at::Tensor& cos_b,
    const c10::optional<at::Tensor>& res_w1, const c10::optional<at::Tensor>& res_w2,
    const c10::optional<at::Tensor>& res_u, const at::Tensor& res_c) {
  TORCH_CHECK(token_states.dim() == 3, "token_states must be [B, L, H]");
  const int64_t B = token_states.size(0);
  at::Tensor q = at::empty({B, proj_w ? proj_w->size(0) : token_states.size(2)}, at::kFloat);
  at::Tensor s = at::empty({B, keywords ? keywords->size(-2) : 0}, at::kFloat);
  pool_cross_out(token_states, mask, pool_v, pool_b, proj_w, proj_b, keywords, crossing, cos_w, cos_b, res_w1,
                 res_w2, res_u, res_c, q, s);
  return {q, s};
}

}  // namespace

TORCH_LIBRARY(twinbert, lib) {
  lib.def("pool_cross(Tensor token_states, Tensor mask, Tensor pool_v, Tensor pool_b, Tensor? proj_w, "
          "Tensor? proj_b, Tensor? keywords, int crossing, Tensor cos_w, Tensor cos_b, Tensor? res_w1, "
          "Tensor? res_w2, Tensor? res_u, Tensor res_c) -> (Tensor, Tensor)",
          &pool_cross);
  lib.def("pool_cross_out(Tensor token_states, Tensor mask, Tensor pool_v, Tensor pool_b, Tensor? proj_w, "
          "Tensor? proj_b, Tensor? keywords, int crossing, Tensor cos_w, Tensor cos_b, Tensor? res_w1, "
          "Tensor? res_w2, Tensor? res_u, Tensor res_c, Tensor(a!) q_out, Tensor(b!) s_out) -> ()",
          &pool_cross_out);
}

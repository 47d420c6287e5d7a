// The reference model's host kernels: each operation is a host function on
// the stream; matrix products through OpenBLAS (cblas_sgemm; cblas_sgemv for one row).
#include "llama_kernels.hpp"

#include "sampling.hpp"

#include <cobatch/gpu/detail/host_simd.hpp>

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

extern "C" void openblas_set_num_threads(int);

namespace cobatch::model {

namespace {

using gpu::detail::f32x4;
using gpu::detail::load4;
using gpu::detail::store4;

// y[rows][out] = x[rows][in] * w[out][in]^T + beta * y. beta 1 is a residual
// add fused into the product, as the CUDA kernels do it: no second pass over
// y, and OpenBLAS skips its pass that scales y by beta.
void matmul(const float* x, const std::vector<float>& w, float* y, std::int32_t rows, std::int32_t in, std::int32_t out,
            float beta = 0.0f) {
  if (rows <= 0) return;
  if (rows == 1) {
    // One row (a lone decode): sgemm would first pack all of w, reading and
    // writing it once more than the product itself reads it.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w.data(), in, x, 1, beta, y, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w.data(), in, beta, y, out);
}

// The elementwise work below runs on the stream's one thread while the BLAS
// threads wait for the next product, so each microsecond of it is a
// microsecond of the step: built for AVX2 as well as the baseline
// (COBATCH_HOST_CLONES), four floats at a time.

// Sum of squares, in 16 float lanes added in double at the end.
COBATCH_HOST_CLONES void rms_norm(const float* x, const std::vector<float>& w, float* y, std::int32_t rows,
                                  std::int32_t n, float eps) {
  const auto len = static_cast<std::size_t>(n);
  for (std::int32_t r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<std::ptrdiff_t>(r) * n;
    float* yr = y + static_cast<std::ptrdiff_t>(r) * n;
    f32x4 part[4] = {};
    std::size_t i = 0;
    for (; i + 16 <= len; i += 16) {
      for (std::size_t k = 0; k < 4; ++k) {
        const f32x4 v = load4(xr + i + 4 * k);
        part[k] += v * v;
      }
    }
    double ss = 0.0;
    for (; i < len; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    for (const f32x4& p : part)
      for (int k = 0; k < 4; ++k) ss += p[k];
    const auto inv = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
    i = 0;
    for (; i + 4 <= len; i += 4) store4(yr + i, load4(xr + i) * inv * load4(w.data() + i));
    for (; i < len; ++i) yr[i] = xr[i] * inv * w[i];
  }
}

// g = silu(g) * u (SwiGLU). sigmoid(x) from e = exp(-|x|), whose argument is
// never positive: 1 / (1 + e) for x >= 0, e / (1 + e) below. -|x| under -87
// is taken as -87, where e ~ 1e-38 no longer moves the sum 1 + e.
COBATCH_HOST_CLONES void swiglu(float* g, const float* u, std::size_t n) {
  using gpu::detail::abs4;
  using gpu::detail::exp_nonpositive;
  using gpu::detail::select;
  constexpr f32x4 one = {1.0f, 1.0f, 1.0f, 1.0f};
  constexpr f32x4 floor = {-87.0f, -87.0f, -87.0f, -87.0f};
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const f32x4 x = load4(g + i);
    f32x4 a = -abs4(x);
    a = select(a > floor, a, floor);  // NaN too: x carries it into the result
    const f32x4 e = exp_nonpositive(a);
    const f32x4 sigmoid = select(x >= 0.0f, one, e) / (one + e);
    store4(g + i, x * sigmoid * load4(u + i));
  }
  for (; i < n; ++i) {
    const float x = g[i];
    const float a = -std::fabs(x);
    const float e = exp_nonpositive(a > -87.0f ? a : -87.0f);  // NaN: -87, as above
    g[i] = x * ((x >= 0.0f ? 1.0f : e) / (1.0f + e)) * u[i];
  }
}

class host_kernels final : public llama_kernels {
 public:
  host_kernels(const llama_weights& w, std::int32_t blas_threads)
      : w_(&w), rope_inv_freq_(rope_inverse_frequencies(w.config)) {
    // The stream's worker thread is the compute. With several ranks in one
    // process BLAS threads on top would fight the other ranks' workers for
    // the same cores, hence one by default; a lone rank may use the cores.
    if (blas_threads < 1)
      throw std::invalid_argument("make_host_kernels: blas_threads " + std::to_string(blas_threads) +
                                  " is not positive");
    openblas_set_num_threads(blas_threads);
  }

  void bind(llama_activations&, const engine::ubatch_io&) override {}

  void embed(llama_activations& a, const engine::ubatch_io& io, std::int32_t rows, gpu::stream_ref s) override {
    s.enqueue([this, &a, io, rows] {
      const llama_config& c = w_->config;
      float* x = a.x.data();
      for (std::int32_t r = 0; r < rows; ++r) {
        const std::int32_t t = std::clamp(io.token_ids[r], 0, c.vocab_size - 1);
        std::copy_n(w_->embed.data() + static_cast<std::ptrdiff_t>(t) * c.hidden, c.hidden,
                    x + static_cast<std::ptrdiff_t>(r) * c.hidden);
      }
    });
  }

  void pre_attention(llama_activations& a, const engine::ubatch_io& io, std::int32_t layer, std::int32_t rows,
                     gpu::stream_ref s) override {
    s.enqueue([this, &a, io, layer, rows] {
      const llama_config& c = w_->config;
      const llama_layer_weights& L = w_->layers[static_cast<std::size_t>(layer)];
      rms_norm(a.x.data(), L.attn_norm, a.xn.data(), rows, c.hidden, c.rms_eps);
      matmul(a.xn.data(), L.wq, a.q.data(), rows, c.hidden, c.q_dim());
      matmul(a.xn.data(), L.wk, a.k.data(), rows, c.hidden, c.kv_dim());
      matmul(a.xn.data(), L.wv, a.v.data(), rows, c.hidden, c.kv_dim());
      // Rotary positions, rotate-half form (Llama's): pairs (i, i + d/2).
      const std::int32_t half = c.head_dim / 2;
      for (std::int32_t r = 0; r < rows; ++r) {
        const auto pos = static_cast<float>(io.positions[r]);
        for (std::int32_t i = 0; i < half; ++i) {
          const float angle = pos * rope_inv_freq_[static_cast<std::size_t>(i)];
          const float cs = std::cos(angle), sn = std::sin(angle);
          auto apply = [&](float* vec, std::int32_t heads) {
            for (std::int32_t h = 0; h < heads; ++h) {
              float* hv = vec + static_cast<std::ptrdiff_t>(h) * c.head_dim;
              const float x0 = hv[i], x1 = hv[i + half];
              hv[i] = x0 * cs - x1 * sn;
              hv[i + half] = x1 * cs + x0 * sn;
            }
          };
          apply(a.q.data() + static_cast<std::ptrdiff_t>(r) * c.q_dim(), c.num_heads);
          apply(a.k.data() + static_cast<std::ptrdiff_t>(r) * c.kv_dim(), c.num_kv_heads);
        }
      }
    });
  }

  void post_attention(llama_activations& a, std::int32_t layer, std::int32_t rows, gpu::stream_ref s) override {
    s.enqueue([this, &a, layer, rows] {
      const llama_config& c = w_->config;
      const llama_layer_weights& L = w_->layers[static_cast<std::size_t>(layer)];
      float* x = a.x.data();
      matmul(a.attn.data(), L.wo, x, rows, c.q_dim(), c.hidden, 1.0f);  // x += attn Wo^T
      rms_norm(x, L.mlp_norm, a.xn.data(), rows, c.hidden, c.rms_eps);
      matmul(a.xn.data(), L.w_gate, a.gate.data(), rows, c.hidden, c.intermediate);
      matmul(a.xn.data(), L.w_up, a.up.data(), rows, c.hidden, c.intermediate);
      swiglu(a.gate.data(), a.up.data(), static_cast<std::size_t>(rows) * static_cast<std::size_t>(c.intermediate));
      matmul(a.gate.data(), L.w_down, x, rows, c.intermediate, c.hidden, 1.0f);  // x += h Wdown^T
    });
  }

  void head_and_sample(llama_activations& a, const engine::ubatch_io& io, std::int32_t, gpu::stream_ref s) override {
    s.enqueue([this, &a, io] {
      const llama_config& c = w_->config;
      a.sample_reqs.clear();
      for (std::int32_t r = 0; r < io.counts[1]; ++r) {
        const std::int32_t row = io.sample_rows[r];
        if (row < 0) continue;
        rms_norm(a.x.data() + static_cast<std::ptrdiff_t>(row) * c.hidden, w_->final_norm,
                 a.rows.data() + static_cast<std::ptrdiff_t>(a.sample_reqs.size()) * c.hidden, 1, c.hidden, c.rms_eps);
        a.sample_reqs.push_back(r);
      }
      const auto n = static_cast<std::int32_t>(a.sample_reqs.size());
      matmul(a.rows.data(), w_->lm_head, a.logits.data(), n, c.hidden, c.vocab_size);
      for (std::int32_t i = 0; i < n; ++i) {
        const std::int32_t r = a.sample_reqs[static_cast<std::size_t>(i)];
        const std::span<const float> logits(a.logits.data() + static_cast<std::ptrdiff_t>(i) * c.vocab_size,
                                            static_cast<std::size_t>(c.vocab_size));
        io.sampled[io.req_slots[r]] =
            sample_token(logits, io.temperature[r], io.top_p[r], io.seed[r], io.sample_index[r], a.scratch);
        if (io.logits != nullptr)
          std::copy(logits.begin(), logits.end(), io.logits + static_cast<std::ptrdiff_t>(io.req_slots[r]) * c.vocab_size);
      }
    });
  }

 private:
  const llama_weights* w_;
  std::vector<float> rope_inv_freq_;
};

}  // namespace

std::vector<float> rope_inverse_frequencies(const llama_config& c) {
  std::vector<float> f;
  for (std::int32_t i = 0; i < c.head_dim / 2; ++i)
    f.push_back(std::pow(c.rope_theta, -2.0f * static_cast<float>(i) / static_cast<float>(c.head_dim)));
  return f;
}

std::unique_ptr<llama_kernels> make_host_kernels(const llama_weights& weights, std::int32_t blas_threads) {
  return std::make_unique<host_kernels>(weights, blas_threads);
}

}  // namespace cobatch::model

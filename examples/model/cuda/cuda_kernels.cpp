// The reference model's layer math on CUDA: cuBLAS SGEMM for the matrix
// products, model_kernels.cu for the rest, all enqueued on the stage's
// stream; nothing here waits for the device after construction.
#include "cuda_kernels.hpp"

#include "model_launch.hpp"

#include <cobatch/gpu/cuda/cuda_device.hpp>
#include <cobatch/gpu/cuda/error.hpp>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace cobatch::model {

namespace {

class cublas_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "cublas"; }
  std::string message(int code) const override {
    const auto status = static_cast<cublasStatus_t>(code);
    return std::string(cublasGetStatusName(status)) + ": " + cublasGetStatusString(status);
  }
  std::error_condition default_error_condition(int code) const noexcept override {
    switch (code) {
      case CUBLAS_STATUS_ALLOC_FAILED:
        return std::errc::not_enough_memory;
      case CUBLAS_STATUS_INVALID_VALUE:
        return std::errc::invalid_argument;
      default:
        return {code, *this};
    }
  }
};

void check_launch(int status, const char* kernel) { gpu::cuda::check_cuda(status, kernel); }

gpu::typed_buffer<float> upload(gpu::device& d, const std::vector<float>& v) {
  gpu::typed_buffer<float> b(d, v.size());
  COBATCH_CUDA_CHECK(cudaMemcpy(b.data(), v.data(), b.size_bytes(), cudaMemcpyHostToDevice));
  return b;
}

// A cuBLAS handle, owned. One per model rather than one shared by every
// model of the device: a handle's stream and workspace are per handle, and
// models driven from different threads must not race on them.
class blas_handle {
 public:
  blas_handle() { check_cublas(cublasCreate(&h_), "cublasCreate"); }
  ~blas_handle() { cublasDestroy(h_); }
  blas_handle(const blas_handle&) = delete;
  blas_handle& operator=(const blas_handle&) = delete;
  cublasHandle_t get() const noexcept { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

struct device_layer {
  gpu::typed_buffer<float> attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down;
};

std::int32_t pow2_at_least(std::int32_t n) {
  std::int32_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

class cuda_kernels final : public llama_kernels {
 public:
  cuda_kernels(gpu::cuda::cuda_device& d, const llama_weights& w)
      : device_(made_current(d)), c_(w.config), sort_size_(pow2_at_least(w.config.vocab_size)) {
    embed_ = upload(d, w.embed);
    final_norm_ = upload(d, w.final_norm);
    lm_head_ = upload(d, w.lm_head);
    inv_freq_ = upload(d, rope_inverse_frequencies(c_));
    for (const llama_layer_weights& L : w.layers) {
      layers_.push_back({upload(d, L.attn_norm), upload(d, L.wq), upload(d, L.wk), upload(d, L.wv), upload(d, L.wo),
                         upload(d, L.mlp_norm), upload(d, L.w_gate), upload(d, L.w_up), upload(d, L.w_down)});
    }
    // Plain FP32 (no TF32 tensor-core rounding): the CUDA model is checked
    // against the host one within 1e-3 (tests/cuda/model).
    check_cublas(cublasSetMathMode(blas_.get(), CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    // A workspace of our own, so that cuBLAS allocates nothing while a graph
    // stage is being captured (32 MiB: what cuBLAS asks for on Hopper).
    blas_workspace_ = gpu::allocate(d, std::size_t{32} << 20);
    check_cublas(cublasSetWorkspace(blas_.get(), blas_workspace_.data(), blas_workspace_.size()), "cublasSetWorkspace");
  }

  void bind(llama_activations& a, const engine::ubatch_io& io) override {
    // The sampler's sort: keys, ids and cumulative mass per request row.
    const auto n = static_cast<std::size_t>(io.capacity_reqs) * static_cast<std::size_t>(sort_size_);
    a.workspace = gpu::allocate(*device_, n * (sizeof(double) + sizeof(float) + sizeof(std::int32_t)));
  }

  void embed(llama_activations& a, const engine::ubatch_io& io, std::int32_t rows, gpu::stream_ref s) override {
    check_launch(cuda_launch::embed(a.x.data(), embed_.data(), io.token_ids, rows, c_.hidden, c_.vocab_size, native(s)),
                 "cuda_launch::embed");
  }

  void pre_attention(llama_activations& a, const engine::ubatch_io& io, std::int32_t layer, std::int32_t rows,
                     gpu::stream_ref s) override {
    const device_layer& L = layers_.at(static_cast<std::size_t>(layer));
    check_launch(cuda_launch::rms_norm(a.x.data(), L.attn_norm.data(), a.xn.data(), rows, c_.hidden, c_.rms_eps, nullptr,
                                       nullptr, native(s)),
                 "cuda_launch::rms_norm");
    gemm(a.xn.data(), L.wq, a.q.data(), rows, c_.hidden, c_.q_dim(), 0.0f, s);
    gemm(a.xn.data(), L.wk, a.k.data(), rows, c_.hidden, c_.kv_dim(), 0.0f, s);
    gemm(a.xn.data(), L.wv, a.v.data(), rows, c_.hidden, c_.kv_dim(), 0.0f, s);
    check_launch(cuda_launch::rope(a.q.data(), a.k.data(), io.positions, inv_freq_.data(), rows, c_.num_heads,
                                   c_.num_kv_heads, c_.head_dim, native(s)),
                 "cuda_launch::rope");
  }

  void post_attention(llama_activations& a, std::int32_t layer, std::int32_t rows, gpu::stream_ref s) override {
    const device_layer& L = layers_.at(static_cast<std::size_t>(layer));
    // The residual adds are the GEMMs' beta = 1: x += attn Wo^T, x += h Wdown^T.
    gemm(a.attn.data(), L.wo, a.x.data(), rows, c_.q_dim(), c_.hidden, 1.0f, s);
    check_launch(cuda_launch::rms_norm(a.x.data(), L.mlp_norm.data(), a.xn.data(), rows, c_.hidden, c_.rms_eps, nullptr,
                                       nullptr, native(s)),
                 "cuda_launch::rms_norm");
    gemm(a.xn.data(), L.w_gate, a.gate.data(), rows, c_.hidden, c_.intermediate, 0.0f, s);
    gemm(a.xn.data(), L.w_up, a.up.data(), rows, c_.hidden, c_.intermediate, 0.0f, s);
    check_launch(cuda_launch::swiglu(a.gate.data(), a.up.data(),
                                     static_cast<std::size_t>(rows) * static_cast<std::size_t>(c_.intermediate), native(s)),
                 "cuda_launch::swiglu");
    gemm(a.gate.data(), L.w_down, a.x.data(), rows, c_.intermediate, c_.hidden, 1.0f, s);
  }

  void head_and_sample(llama_activations& a, const engine::ubatch_io& io, std::int32_t rows, gpu::stream_ref s) override {
    // Request r's sampled row, normalised, is row r of `rows` (zeros where r
    // samples nothing): no compaction on the host, so the stage replays.
    const std::int32_t m = std::min(rows, io.capacity_reqs);
    check_launch(cuda_launch::rms_norm(a.x.data(), final_norm_.data(), a.rows.data(), m, c_.hidden, c_.rms_eps,
                                       io.sample_rows, io.counts + 1, native(s)),
                 "cuda_launch::rms_norm");
    gemm(a.rows.data(), lm_head_, a.logits.data(), m, c_.hidden, c_.vocab_size, 0.0f, s);
    const auto n = static_cast<std::size_t>(io.capacity_reqs) * static_cast<std::size_t>(sort_size_);
    auto* base = static_cast<std::byte*>(a.workspace.data());
    cuda_launch::sample_args args{};
    args.logits = a.logits.data();
    args.rows = m;
    args.vocab = c_.vocab_size;
    args.sort_size = sort_size_;
    args.counts = io.counts;
    args.sample_rows = io.sample_rows;
    args.req_slots = io.req_slots;
    args.sample_index = io.sample_index;
    args.temperature = io.temperature;
    args.top_p = io.top_p;
    args.seed = io.seed;
    args.sampled = io.sampled;
    args.kept_logits = io.logits;
    args.cumulative = reinterpret_cast<double*>(base);
    args.keys = reinterpret_cast<float*>(base + n * sizeof(double));
    args.ids = reinterpret_cast<std::int32_t*>(base + n * (sizeof(double) + sizeof(float)));
    check_launch(cuda_launch::sample(args, native(s)), "cuda_launch::sample");
  }

 private:
  static void* native(gpu::stream_ref s) noexcept { return s.native_handle(); }
  // Before any member: the cuBLAS handle belongs to the device current when
  // it is created.
  static gpu::cuda::cuda_device* made_current(gpu::cuda::cuda_device& d) {
    d.make_current();
    return &d;
  }

  // y[rows][out] = x[rows][in] w[out][in]^T + beta y. Row-major y is
  // column-major y^T = w x^T: w read transposed, x as is.
  void gemm(const float* x, const gpu::typed_buffer<float>& w, float* y, std::int32_t rows, std::int32_t in,
            std::int32_t out, float beta, gpu::stream_ref s) {
    if (rows <= 0) return;
    const float one = 1.0f;
    check_cublas(cublasSetStream(blas_.get(), static_cast<cudaStream_t>(native(s))), "cublasSetStream");
    check_cublas(cublasSgemm(blas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w.data(), in, x, in, &beta, y, out),
                 "cublasSgemm");
  }

  gpu::cuda::cuda_device* device_;
  llama_config c_;
  std::int32_t sort_size_;
  gpu::typed_buffer<float> embed_, final_norm_, lm_head_, inv_freq_;
  std::vector<device_layer> layers_;
  gpu::device_buffer blas_workspace_;  // outlives the handle that uses it
  blas_handle blas_;
};

}  // namespace

const std::error_category& cublas_category() noexcept {
  static const cublas_category_impl category;
  return category;
}

void check_cublas(int status, const char* call, std::source_location where) {
  if (status != 0) [[unlikely]] {
    throw gpu::cuda::cuda_error(std::error_code(status, cublas_category()), call, where);
  }
}

std::unique_ptr<llama_kernels> make_cuda_kernels(gpu::device& device, const llama_weights& weights) {
  auto* d = dynamic_cast<gpu::cuda::cuda_device*>(&device);
  if (d == nullptr)
    throw std::invalid_argument("make_cuda_kernels: device " + device.name() + " is not a CUDA device");
  return std::make_unique<cuda_kernels>(*d, weights);
}

}  // namespace cobatch::model

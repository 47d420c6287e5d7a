// The backend contract (tests/support/backend_contract.hpp) on the CUDA
// backend: the same promises the host backend keeps in gpu_tests, here on a
// GPU, with NCCL communicators over every visible device.
#include "backend_contract.hpp"

#include "cobatch/gpu/cuda/buffer.hpp"
#include "cobatch/gpu/cuda/cuda_device.hpp"
#include "cobatch/gpu/cuda/error.hpp"
#include "cobatch/gpu/cuda/nccl_communicator.hpp"

#include <cuda_runtime.h>

#include <memory>
#include <vector>

namespace {
class cuda_backend final : public contract::backend {
 public:
  cuda_backend() {
    loop_.attach(reactor_);
    const int n = cobatch::gpu::cuda::cuda_device::count();
    for (int d = 0; d < n; ++d) devices_.push_back(std::make_unique<cobatch::gpu::cuda::cuda_device>(reactor_, d));
    devices_.front()->make_current();
  }

  cobatch::coro::run_loop& loop() override { return loop_; }
  cobatch::gpu::device& device(int r) override {
    devices_.at(static_cast<std::size_t>(r))->make_current();
    return *devices_.at(static_cast<std::size_t>(r));
  }
  int max_ranks() const override { return static_cast<int>(devices_.size()); }
  std::vector<cobatch::gpu::communicator> communicators(int ranks, std::chrono::milliseconds timeout) override {
    std::vector<cobatch::gpu::cuda::cuda_device*> used;
    for (int r = 0; r < ranks; ++r) used.push_back(devices_.at(static_cast<std::size_t>(r)).get());
    auto comms = cobatch::gpu::cuda::nccl::make_local_communicators(used, {timeout});
    devices_.front()->make_current();
    return comms;
  }
  void* collective_memory(int r, std::size_t bytes) override {
    devices_.at(static_cast<std::size_t>(r))->make_current();
    memory_.emplace_back(bytes, cobatch::gpu::cuda::memory_kind::device);
    cobatch::gpu::cuda::check_cuda(cudaMemset(memory_.back().data(), 0, bytes), "cudaMemset");
    // cudaMemset runs on the legacy default stream, which the backend's
    // non-blocking streams do not wait for: finish it before they use it.
    cobatch::gpu::cuda::check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    devices_.front()->make_current();
    return memory_.back().data();
  }
  void copy(void* dst, const void* src, std::size_t bytes, cobatch::gpu::stream_ref s) override {
    cobatch::gpu::cuda::copy_async(dst, src, bytes, s);
  }
  std::shared_ptr<void> all_ranks_scope() override {
    // One thread issues every rank's calls: each rank's collective waits for
    // the others', so all must be issued together.
    return std::make_shared<cobatch::gpu::cuda::nccl::thread_group_guard>();
  }

 private:
  cobatch::coro::run_loop loop_;
  cobatch::coro::completion_reactor reactor_{loop_.get_executor()};
  std::vector<std::unique_ptr<cobatch::gpu::cuda::cuda_device>> devices_;
  std::vector<cobatch::gpu::cuda::allocation> memory_;
};
}  // namespace

COBATCH_BACKEND_CONTRACT(cuda_backend, "cuda")

// The backend contract (tests/support/backend_contract.hpp) on the host
// backend, which CI runs on every change. The CUDA backend runs the same
// contract in cuda_tests (tests/cuda/device/backend_contract_test.cpp).
#include "backend_contract.hpp"

#include "cobatch/gpu/host/host_device.hpp"

#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

namespace {
class host_backend final : public contract::backend {
 public:
  host_backend() { loop_.attach(reactor_); }

  cobatch::coro::run_loop& loop() override { return loop_; }
  cobatch::gpu::device& device(int) override { return dev_; }
  int max_ranks() const override { return 4; }
  std::vector<cobatch::gpu::communicator> communicators(int ranks, std::chrono::milliseconds timeout) override {
    return cobatch::gpu::host::make_communicators(ranks, {timeout});
  }
  void* collective_memory(int, std::size_t bytes) override {
    memory_.push_back(std::make_unique<std::byte[]>(bytes));  // value-initialized: zeroed
    return memory_.back().get();
  }
  void copy(void* dst, const void* src, std::size_t bytes, cobatch::gpu::stream_ref s) override {
    s.enqueue([dst, src, bytes] { std::memcpy(dst, src, bytes); });
  }

 private:
  cobatch::coro::run_loop loop_;
  cobatch::coro::completion_reactor reactor_{loop_.get_executor()};
  cobatch::gpu::host::host_device dev_{reactor_};
  std::vector<std::unique_ptr<std::byte[]>> memory_;
};
}  // namespace

COBATCH_BACKEND_CONTRACT(host_backend, "host")

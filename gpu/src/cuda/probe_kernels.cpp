#include "cobatch/gpu/cuda/probe_kernels.hpp"

#include "cobatch/gpu/cuda/error.hpp"
#include "cuda_stream.hpp"
#include "probe_launch.hpp"

#include <cmath>

namespace cobatch::gpu::cuda::probe {
namespace {
// Every launch takes a ticket on the stream, so a refused one fails the
// fences made after it and no others.
void* issue(stream_ref s) {
  auto& cs = detail::as_cuda(s.impl());
  cs.issue();
  return cs.get();
}
}  // namespace

void fma_chain(const float* in, float* out, std::size_t n, std::uint32_t iterations, stream_ref s) {
  detail::note_launch(s, launch::fma_chain(in, out, n, iterations, issue(s)));
}

float expected_fma(float x, std::uint32_t iterations) noexcept {
  // The device rounds each fused multiply-add once, as std::fma does.
  for (std::uint32_t k = 0; k < iterations; ++k) x = std::fma(x, 0.999f, 0.001f);
  return x;
}

void spin(std::uint64_t cycles, std::uint32_t* flag, std::uint32_t value, stream_ref s) {
  detail::note_launch(s, launch::spin(cycles, flag, value, issue(s)));
}

void scale_copy(const float* in, float* out, std::size_t n, float scale, stream_ref s) {
  detail::note_launch(s, launch::scale_copy(in, out, n, scale, issue(s)));
}

void empty(stream_ref s) { detail::note_launch(s, launch::empty(issue(s))); }

void invalid_launch(stream_ref s) { detail::note_launch(s, launch::invalid_launch(issue(s))); }

std::vector<int> compiled_architectures() {
  std::vector<int> out(16);
  const int n = launch::compiled_architectures(out.data(), static_cast<int>(out.size()));
  out.resize(static_cast<std::size_t>(n));
  if (n > 16) launch::compiled_architectures(out.data(), n);
  return out;
}

int binary_version() {
  int version = 0;
  check_cuda(launch::binary_version(&version), "cudaFuncGetAttributes(empty_kernel)");
  return version;
}

}  // namespace cobatch::gpu::cuda::probe

#include "cobatch/gpu/error.hpp"

#include <string>

namespace cobatch::gpu {
namespace {
class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "cobatch.gpu"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::operation_failed: return "a stream operation failed";
      case errc::stream_failed: return "the stream failed earlier";
      case errc::invalid_argument: return "invalid argument";
      case errc::capture_invalid: return "invalid graph capture";
      case errc::communicator_aborted: return "communicator aborted";
      case errc::rank_mismatch: return "ranks disagree on the collective";
      case errc::out_of_memory: return "device memory budget exhausted";
      case errc::timeout: return "timed out";
    }
    return "unknown cobatch.gpu error";
  }
};
}  // namespace

const std::error_category& gpu_category() noexcept {
  static const category instance;
  return instance;
}
}  // namespace cobatch::gpu

#include "cobatch/engine/error.hpp"

namespace cobatch::engine {
namespace {

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "cobatch.engine"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::invalid_argument: return "invalid argument";
      case errc::length_mismatch: return "lengths do not add up";
      case errc::negative_length: return "negative length or count";
      case errc::empty_batch: return "empty batch";
      case errc::too_many_ubatches: return "more micro-batches than tokens";
      case errc::overflow: return "arithmetic overflow";
      case errc::unknown_mode: return "unknown mode";
      case errc::ubatch_failed: return "a micro-batch failed";
      case errc::no_capacity: return "no capacity left";
      case errc::address_changed: return "captured buffer address changed";
    }
    return "unknown cobatch.engine error";
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<errc>(value)) {
      case errc::invalid_argument:
      case errc::length_mismatch:
      case errc::negative_length:
      case errc::empty_batch:
      case errc::too_many_ubatches:
      case errc::unknown_mode:
        return std::errc::invalid_argument;
      case errc::overflow: return std::errc::value_too_large;
      default: return {value, *this};
    }
  }
};

}  // namespace

const std::error_category& engine_category() noexcept {
  static const category instance;
  return instance;
}

engine_error::engine_error(errc code, const std::string& detail, std::source_location where)
    : std::system_error(make_error_code(code), detail), where_(where) {}

void throw_engine_error(errc code, const std::string& detail, std::source_location where) {
  throw engine_error(code, detail, where);
}

}  // namespace cobatch::engine

// ubatch_outputs: the seeds' micro-batch context (iterate, iterate_with_data,
// record_output, gather_outputs, gather_and_concat) in C++ form, for code that walks the
// micro-batches of a plan itself rather than through ubatch_scheduler.
//
//   engine::ubatch_outputs<std::vector<float>> outputs(plan.size());
//   for (const engine::ubatch& mb : engine::each_ubatch(plan)) {
//     outputs.record(k++, run_model(mb));
//   }
//   std::vector<float> logits = engine::concat_token_rows(plan, std::move(outputs).gather(), width);
//
// or, for the common case, the scoped helper:
//
//   auto per_mb = engine::for_each_ubatch(plan, [&](const engine::ubatch& mb, std::int32_t k) {
//     return run_model(mb);
//   });
#pragma once

#include <cobatch/coro/generator.hpp>
#include <cobatch/engine/error.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace cobatch::engine {

/// The micro-batches of `plan`, in order, lazily. The plan must outlive the
/// iteration.
inline coro::generator<ubatch> each_ubatch(const ubatch_plan& plan) {
  for (std::int32_t k = 0; k < plan.size(); ++k) co_yield plan[k];
}

/// A micro-batch with its rows of a per-token input: what each_ubatch_with_rows yields.
template <class T>
struct ubatch_with_rows {
  std::int32_t index = 0;
  ubatch mb;
  token_rows<T> rows;
};

namespace detail {
template <class T>
coro::generator<ubatch_with_rows<T>> each_with_rows(const ubatch_plan& plan, token_rows<T> all, token_extent extent) {
  for (std::int32_t k = 0; k < plan.size(); ++k) co_yield {k, plan[k], ubatch_rows(all, plan, k, extent)};
}
}  // namespace detail

/// The micro-batches of `plan` with their rows of `all` (row i = token i),
/// lazily, in order: the seed's iterate_with_data. The rows are views of
/// `all`. Checked before the first micro-batch: throws engine_error
/// (errc::invalid_argument) when `all` has fewer rows than the plan's
/// tokens (padded tokens for token_extent::padded).
template <class T>
coro::generator<ubatch_with_rows<T>> each_ubatch_with_rows(const ubatch_plan& plan, token_rows<T> all,
                                                           token_extent extent = token_extent::real) {
  if (plan.size() > 0) (void)ubatch_rows(all, plan, plan.size() - 1, extent);  // the last reaches furthest
  return detail::each_with_rows(plan, all, extent);
}

/// One output per micro-batch, recorded in any order, gathered in order.
template <class T>
class ubatch_outputs {
 public:
  /// Throws engine_error (errc::invalid_argument) for count < 1.
  explicit ubatch_outputs(std::int32_t count) {
    if (count < 1) {
      throw_engine_error(errc::invalid_argument,
                         "ubatch_outputs: " + std::to_string(count) + " micro-batches; at least 1 is needed");
    }
    slots_.resize(static_cast<std::size_t>(count));
  }

  std::int32_t size() const noexcept { return static_cast<std::int32_t>(slots_.size()); }
  bool recorded(std::int32_t k) const noexcept { return in_range(k) && slots_[k].has_value(); }
  bool complete() const noexcept {
    for (const auto& s : slots_) {
      if (!s) return false;
    }
    return true;
  }

  /// Records micro-batch k's output. Throws engine_error
  /// (errc::invalid_argument) when k is out of range or already recorded:
  /// a second output for one micro-batch is a bug, not an update.
  void record(std::int32_t k, T value) {
    if (!in_range(k)) {
      throw_engine_error(errc::invalid_argument, "ubatch_outputs::record: micro-batch " + std::to_string(k) +
                                                     " is out of range [0, " + std::to_string(size()) + ")");
    }
    if (slots_[k]) {
      throw_engine_error(errc::invalid_argument,
                         "ubatch_outputs::record: micro-batch " + std::to_string(k) + " was already recorded");
    }
    slots_[k].emplace(std::move(value));
  }

  /// The outputs in micro-batch order. Throws engine_error
  /// (errc::invalid_argument) listing the micro-batches that recorded
  /// nothing, rather than returning a short result.
  std::vector<T> gather() && {
    std::string missing;
    for (std::int32_t k = 0; k < size(); ++k) {
      if (!slots_[k]) missing += (missing.empty() ? "" : ", ") + std::to_string(k);
    }
    if (!missing.empty()) {
      throw_engine_error(errc::invalid_argument, "ubatch_outputs::gather: no output recorded for micro-batch(es) " +
                                                     missing + " of " + std::to_string(size()));
    }
    std::vector<T> out;
    out.reserve(slots_.size());
    for (auto& s : slots_) out.push_back(std::move(*s));
    slots_.clear();
    return out;
  }

 private:
  bool in_range(std::int32_t k) const noexcept { return k >= 0 && k < size(); }
  std::vector<std::optional<T>> slots_;
};

/// Runs `fn(ubatch, k)` for every micro-batch of `plan` in order and returns
/// the results in order: the scoped form of iterate + record + gather.
template <class F>
  requires std::is_invocable_v<F&, const ubatch&, std::int32_t> &&
           (!std::is_void_v<std::invoke_result_t<F&, const ubatch&, std::int32_t>>)
auto for_each_ubatch(const ubatch_plan& plan, F&& fn) {
  using R = std::invoke_result_t<F&, const ubatch&, std::int32_t>;
  ubatch_outputs<R> outputs(plan.size());
  for (std::int32_t k = 0; k < plan.size(); ++k) outputs.record(k, std::invoke(fn, plan[k], k));
  return std::move(outputs).gather();
}

/// Concatenates per-micro-batch per-token outputs into one buffer for the
/// whole batch: micro-batch k's output holds `row_width` values per token
/// slot, real tokens first (padding, if present, after them and dropped).
/// Rows come out in token order, since micro-batches cover consecutive
/// tokens. Throws engine_error (errc::length_mismatch) naming the
/// micro-batch whose output is too short, errc::invalid_argument for a
/// count that does not match the plan or a row_width < 1.
template <class T>
std::vector<T> concat_token_rows(const ubatch_plan& plan, const std::vector<std::vector<T>>& per_ubatch,
                                 std::int64_t row_width = 1) {
  if (row_width < 1) {
    throw_engine_error(errc::invalid_argument, "concat_token_rows: row_width " + std::to_string(row_width) + " < 1");
  }
  if (static_cast<std::int64_t>(per_ubatch.size()) != plan.size()) {
    throw_engine_error(errc::invalid_argument, "concat_token_rows: " + std::to_string(per_ubatch.size()) +
                                                   " outputs for a plan of " + std::to_string(plan.size()) +
                                                   " micro-batches");
  }
  std::vector<T> out;
  out.reserve(static_cast<std::size_t>(plan.num_tokens() * row_width));
  for (std::int32_t k = 0; k < plan.size(); ++k) {
    const auto need = static_cast<std::size_t>(plan[k].real_tokens() * row_width);
    const auto& part = per_ubatch[static_cast<std::size_t>(k)];
    if (part.size() < need) {
      throw_engine_error(errc::length_mismatch,
                         "concat_token_rows: micro-batch " + std::to_string(k) + " has " +
                             std::to_string(part.size()) + " values; its " + std::to_string(plan[k].real_tokens()) +
                             " tokens need " + std::to_string(need));
    }
    out.insert(out.end(), part.begin(), part.begin() + static_cast<std::ptrdiff_t>(need));
  }
  return out;
}

}  // namespace cobatch::engine

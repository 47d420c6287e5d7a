// ubatch_forward: turns a model's forward function for one micro-batch into
// a forward over a whole batch that slices the inputs, runs the micro-batches
// through a ubatch_scheduler, and merges their outputs (vLLM's UBatchWrapper,
// the seed's UBatchWrapper). unwrap() hands back the function.
//
//   auto layer = [&](engine::ubatch_context& ctx, engine::token_rows<const int> ids,
//                    engine::token_rows<const float> hidden) -> coro::task<std::vector<float>> {
//     enqueue_attention(ctx.slice(), ids, hidden, ctx.current_stream());
//     co_await ctx.switch_to_comm();
//     ...
//     co_return out;  // output_width values per real token of the micro-batch
//   };
//   engine::ubatch_forward forward(scheduler, layer, {.num_ubatches = 2, .output_width = hidden_size});
//   std::vector<float> out = co_await forward(batch, ids, hidden);  // batch order
//
// Any number of per-token inputs, each a token_rows<const T> of its own T
// (token ids, positions, embeddings, intermediate states: the seed's
// UbatchMetadata fields), row i belonging to token i. Each micro-batch's
// function gets its own rows of each, viewed, not copied.
//
// Where the seed runs micro-batches on a thread pool behind barriers
// (barrier_sync, wait_ready), the micro-batches here are coroutines taking
// turns on the awaiting thread at their switch points: no barrier to reach,
// nothing to time out, and a micro-batch that throws cancels its siblings
// (ubatch_scheduler's failure rules).
#pragma once

#include <cobatch/coro/task.hpp>
#include <cobatch/engine/batch.hpp>
#include <cobatch/engine/error.hpp>
#include <cobatch/engine/ubatch/token_rows.hpp>
#include <cobatch/engine/ubatch/ubatch_order.hpp>
#include <cobatch/engine/ubatch/ubatch_outputs.hpp>
#include <cobatch/engine/ubatch/ubatch_scheduler.hpp>
#include <cobatch/engine/ubatch/ubatch_slicing.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace cobatch::engine {

/// Turn order of a wrapped forward's micro-batches.
enum class ubatch_turns : std::uint8_t {
  in_order,      ///< 0, 1, ..., N-1
  decode_first,  ///< decode micro-batches first (decode_first_order)
};

struct ubatch_forward_options {
  /// Micro-batches per call, at least 1 (a batch too small to split runs as
  /// one: see slice_batch's outcomes). Ignored when `choose` is set.
  std::int32_t num_ubatches = 2;
  /// Picks the count per call from the batch and its padded size (e.g. from
  /// choose_ubatch_count): the seed's DynamicUBatchWrapper.
  std::function<std::int32_t(const batch_view& batch, std::int32_t padded_tokens)> choose{};
  slice_policy slicing{};
  /// Values per token row in each micro-batch's output (merged outputs are
  /// concatenated in token order, the last micro-batch's padding dropped).
  std::int64_t output_width = 1;
  /// Which rows each input gives a micro-batch: real tokens only, or with the
  /// padding a graph reads (then each input must cover padded_tokens rows).
  token_extent input_extent = token_extent::real;
  ubatch_turns turns = ubatch_turns::in_order;
};

namespace detail {
template <class T>
struct is_std_vector : std::false_type {};
template <class T, class A>
struct is_std_vector<std::vector<T, A>> : std::true_type {};
}  // namespace detail

template <class Fn>
class ubatch_forward {
 public:
  /// `scheduler` must outlive every call. Throws engine_error
  /// (errc::invalid_argument) for num_ubatches < 1 without `choose`, or an
  /// output_width < 1.
  ubatch_forward(ubatch_scheduler& scheduler, Fn fn, ubatch_forward_options options = {})
      : scheduler_(&scheduler), fn_(std::move(fn)), options_(std::move(options)) {
    if (!options_.choose && options_.num_ubatches < 1)
      throw_engine_error(errc::invalid_argument, "ubatch_forward: num_ubatches " +
                                                     std::to_string(options_.num_ubatches) + " < 1");
    if (options_.output_width < 1)
      throw_engine_error(errc::invalid_argument, "ubatch_forward: output_width " +
                                                     std::to_string(options_.output_width) + " < 1");
  }

  /// The micro-batched forward over `batch`: slices it into micro-batches,
  /// gives each the rows of every input, runs them through the scheduler and
  /// merges the outputs. A micro-batch function returning
  /// task<std::vector<T>> yields one std::vector<T> in token order; one
  /// returning task<R> for another R yields std::vector<R> in micro-batch
  /// order; task<void> yields void.
  ///
  /// The batch's arrays, the inputs and this wrapper must outlive the
  /// returned task. Throws what slice_batch throws (bad batch, bad counts),
  /// engine_error (errc::invalid_argument) for an input with too few rows,
  /// naming it, what ubatch_scheduler::run throws, and what
  /// concat_token_rows throws for an output shorter than its micro-batch.
  template <class... Ins>
    requires std::invocable<Fn&, ubatch_context&, token_rows<const Ins>...>
  auto operator()(batch_view batch, token_rows<Ins>... inputs) {
    return padded(batch, batch.num_tokens, inputs...);
  }

  /// As above for a batch padded to `padded_tokens` (a capture-ladder rung):
  /// the last micro-batch gets the padding.
  template <class... Ins>
    requires std::invocable<Fn&, ubatch_context&, token_rows<const Ins>...>
  auto padded(batch_view batch, std::int32_t padded_tokens, token_rows<Ins>... inputs) {
    using task_type = std::invoke_result_t<Fn&, ubatch_context&, token_rows<const Ins>...>;
    using value_type = typename task_type::value_type;
    using result_type = std::conditional_t<
        std::is_void_v<value_type>, void,
        std::conditional_t<detail::is_std_vector<value_type>::value, value_type, std::vector<value_type>>>;
    return call<result_type, value_type, const Ins...>(batch, padded_tokens, token_rows<const Ins>(inputs)...);
  }

  /// The wrapped function (the seed's unwrap; its __getattr__ forwarding is
  /// this accessor: the function's own members are reached through it).
  Fn& unwrap() noexcept { return fn_; }
  const Fn& unwrap() const noexcept { return fn_; }
  const ubatch_forward_options& options() const noexcept { return options_; }
  ubatch_scheduler& scheduler() const noexcept { return *scheduler_; }

 private:
  template <class Result, class Value, class... Ins>
  coro::task<Result> call(batch_view batch, std::int32_t padded_tokens, token_rows<Ins>... inputs) {
    const std::int32_t n = options_.choose ? options_.choose(batch, padded_tokens) : options_.num_ubatches;
    const ubatch_plan plan = slice_batch(batch, {n, padded_tokens}, options_.slicing);
    // Every input must cover the rows its micro-batches read: checked before
    // any micro-batch runs, so a short input fails the call, not a step.
    std::int32_t which = 0;
    (check_rows(inputs.num_rows(), plan, which++), ...);
    std::vector<std::int32_t> order;
    if (options_.turns == ubatch_turns::decode_first)
      order = decode_first_order(plan, options_.slicing.thresholds.uniform_decode_query_len);
    const token_extent extent = options_.input_extent;
    auto one = [this, &plan, extent, inputs...](ubatch_context& ctx) -> coro::task<Value> {
      if constexpr (std::is_void_v<Value>) {
        co_await fn_(ctx, ubatch_rows(inputs, plan, ctx.index(), extent)...);
      } else {
        co_return co_await fn_(ctx, ubatch_rows(inputs, plan, ctx.index(), extent)...);
      }
    };
    if constexpr (std::is_void_v<Value>) {
      co_await scheduler_->run(plan, one, {.turn_order = order});
    } else if constexpr (detail::is_std_vector<Value>::value) {
      std::vector<Value> parts = co_await scheduler_->run(plan, one, {.turn_order = order});
      co_return concat_token_rows(plan, parts, options_.output_width);
    } else {
      co_return co_await scheduler_->run(plan, one, {.turn_order = order});
    }
  }

  void check_rows(std::int64_t rows, const ubatch_plan& plan, std::int32_t which) const {
    const std::int64_t need = options_.input_extent == token_extent::padded ? plan.padded_tokens() : plan.num_tokens();
    if (rows < need)
      throw_engine_error(errc::invalid_argument, "ubatch_forward: input " + std::to_string(which) + " has " +
                                                     std::to_string(rows) + " rows; the batch needs " +
                                                     std::to_string(need));
  }

  ubatch_scheduler* scheduler_;
  Fn fn_;
  ubatch_forward_options options_;
};

}  // namespace cobatch::engine

// Every engine error names the API call and the offending value, and never the
// build machine's source files: what a user reads is about their call.
#include "cobatch/engine/error.hpp"

#include "cobatch/engine/batch.hpp"
#include "cobatch/engine/dispatch/dispatch_key.hpp"
#include "cobatch/engine/ubatch/token_rows.hpp"
#include "cobatch/engine/ubatch/ubatch_sizing.hpp"
#include "cobatch/engine/ubatch/ubatch_slicing.hpp"
#include "engine_test_support.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <vector>

using namespace cobatch::engine;
using cobatch::engine::test::owned_batch;
using cobatch::engine::test::thrown_by;

namespace {

// The message starts with the call, holds the value, and has no path or
// source file name in it.
void check_message(const engine_error& e, const std::string& api, const std::string& value) {
  const std::string what = e.what();
  CAPTURE(what);
  CHECK(what.rfind(api + ": ", 0) == 0);
  CHECK(what.find(value) != std::string::npos);
  CHECK(what.find(".cpp") == std::string::npos);
  CHECK(what.find(".hpp") == std::string::npos);
  CHECK(what.find('/') == std::string::npos);
}

}  // namespace

TEST_CASE("slicing errors name the call and the value", "[engine][error][message]") {
  const owned_batch b({4, 3, 5}, {4, 3, 5});
  check_message(thrown_by([&] { slice_batch(b.view(), {0, 12}); }), "slice_batch", "num_ubatches=0");
  check_message(thrown_by([&] { slice_batch(b.view(), {13, 13}); }), "slice_batch", "num_ubatches=13");
  check_message(thrown_by([&] { slice_batch(b.view(), {2, 11}); }), "slice_batch", "padded_tokens=11");
  slice_policy bad_share;
  bad_share.min_request_aligned_share = 0.75;
  check_message(thrown_by([&] { slice_batch(b.view(), {2, 12}, bad_share); }), "slice_batch",
                "min_request_aligned_share=0.75");

  // A batch error found while slicing is reported by the call that found it.
  const std::vector<std::int32_t> loc{0, 4, 3};
  const std::vector<std::int32_t> seq{4, 3};
  const batch_view bad{loc, seq, 3};
  check_message(thrown_by([&] { slice_batch(bad, {1, 3}); }), "slice_batch", "query_start_loc[2]=3");
  check_message(thrown_by([&] { validate_batch(bad); }), "validate_batch", "query_start_loc[2]=3");

  slice_policy policy;
  policy.thresholds.prefill_tokens = 1;
  const ubatch_plan plan = slice_batch(b.view(), {2, 12}, policy);
  check_message(thrown_by([&] { (void)plan.at(2); }), "ubatch_plan::at", "micro-batch 2");
  std::vector<float> rows(10);
  check_message(thrown_by([&] { (void)ubatch_rows(std::span<float>(rows), plan, 1); }), "ubatch_rows",
                "the input has 10 rows");
}

TEST_CASE("sizing errors name the call and the value", "[engine][error][message]") {
  const activation_memory memory{1000, 0.8, 10};
  check_message(thrown_by([&] { (void)fit_to_memory(-5, memory, {}); }), "fit_to_memory", "tokens=-5");
  check_message(thrown_by([&] { (void)fit_to_memory(10, memory, {3, 2}); }), "fit_to_memory", "limits.max=2");

  timing_options bad_alpha;
  bad_alpha.ema_alpha = 1.5;
  bad_alpha.target_step_time = std::chrono::milliseconds(10);
  check_message(thrown_by([&] { step_timing_model m(bad_alpha); }), "step_timing_model", "ema_alpha=1.5");

  timing_options options;
  options.target_step_time = std::chrono::milliseconds(10);
  step_timing_model model{options};
  step_sample sample;
  sample.tokens = 0;
  sample.elapsed = std::chrono::milliseconds(1);
  check_message(thrown_by([&] { model.record(sample); }), "step_timing_model::record", "step_sample::tokens=0");
  check_message(thrown_by([&] { (void)model.choose(step_phase::decode, 0, {}); }), "step_timing_model::choose",
                "tokens=0");
  check_message(thrown_by([&] { (void)choose_ubatch_count(step_phase::decode, 10, {1000, 2.0, 10}, model, {}); }),
                "choose_ubatch_count", "usable_fraction=2");
}

TEST_CASE("token_rows errors name the call and the value", "[engine][error][message]") {
  std::vector<float> storage(12);
  const token_rows<float> all(storage.data(), 3, 2, 4);
  check_message(thrown_by([&] { (void)all.rows(1, 5); }), "token_rows::rows", "rows [1, 5)");
  check_message(thrown_by([&] { (void)all.as_span(); }), "token_rows::as_span", "row_stride=4");
  check_message(thrown_by([&] { token_rows<float>(storage.data(), 2, 4, 3); }), "token_rows", "row_stride=3");
}

TEST_CASE("dispatch key errors name the call and the value", "[engine][error][message]") {
  check_message(thrown_by([&] { (void)dispatch_key::mixed(0, 1); }), "dispatch_key::mixed(tokens=0, requests=1)",
                "at least one token");
}

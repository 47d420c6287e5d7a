#include "cobatch/engine/dispatch/persistent_inputs.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <cstring>
#include <vector>

#include "cobatch/engine/error.hpp"

using namespace cobatch::engine;

namespace {
errc code_of(const engine_error& e) { return static_cast<errc>(e.code().value()); }

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}
}  // namespace

TEST_CASE("copy-in plan copies each source to its buffer and zero-fills the padding", "[engine][dispatch][inputs]") {
  std::vector<std::int32_t> ids_storage(16, -1), pos_storage(16, -1);
  persistent_inputs inputs;
  const auto ids = inputs.add("input_ids", std::as_writable_bytes(std::span(ids_storage)));
  const auto pos = inputs.add("positions", std::as_writable_bytes(std::span(pos_storage)));
  CHECK(inputs.name(pos) == "positions");

  const std::vector<std::int32_t> step_ids{11, 12, 13, 14, 15};  // 5 tokens, padded to 8
  const std::vector<std::int32_t> step_pos{0, 1, 2, 0, 1};
  const std::array<step_input, 2> step{{{ids, bytes_of(step_ids), 8 * sizeof(std::int32_t)},
                                        {pos, bytes_of(step_pos), 8 * sizeof(std::int32_t)}}};
  const auto plan = inputs.plan_copy_in(step);
  REQUIRE(plan.ops.size() == 2);
  CHECK(plan.ops[0].id == ids);
  CHECK(plan.ops[0].destination.data() == reinterpret_cast<std::byte*>(ids_storage.data()));
  CHECK(plan.ops[0].destination.size() == 32);
  CHECK(plan.ops[0].zero_fill_bytes() == 12);
  CHECK(plan.copy_bytes() == 40);
  CHECK(plan.zero_fill_bytes() == 24);

  execute_on_host(plan);
  CHECK(ids_storage == std::vector<std::int32_t>{11, 12, 13, 14, 15, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1});
  CHECK(pos_storage == std::vector<std::int32_t>{0, 1, 2, 0, 1, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1});

  // The plan object is reused step to step.
  copy_plan reused;
  inputs.plan_copy_in(step, reused);
  const auto* data = reused.ops.data();
  inputs.plan_copy_in(std::span(step).first(1), reused);
  CHECK(reused.ops.size() == 1);
  CHECK(reused.ops.data() == data);
}

TEST_CASE("copy-in plans reject inputs that do not fit, naming the buffer", "[engine][dispatch][inputs]") {
  std::vector<std::byte> storage(64);
  persistent_inputs inputs;
  const auto slots = inputs.add("slot_mapping", storage);
  const std::vector<std::byte> src(40);
  auto code = [&](std::vector<step_input> step, const char* needle) {
    try {
      inputs.plan_copy_in(step);
    } catch (const engine_error& e) {
      CHECK_THAT(e.what(), Catch::Contains(needle));
      return code_of(e);
    }
    return errc{};
  };
  CHECK(code({{slots, src, 32}}, "slot_mapping") == errc::length_mismatch);
  CHECK(code({{slots, src, 80}}, "slot_mapping") == errc::no_capacity);
  CHECK(code({{slots, src, 48}, {slots, src, 48}}, "given twice") == errc::invalid_argument);
  CHECK(code({{static_cast<buffer_id>(9), src, 48}}, "unknown buffer id 9") == errc::invalid_argument);
  CHECK(code({{slots, src, 64}}, "") == errc{});
}

TEST_CASE("the address check reports a buffer that moved since capture", "[engine][dispatch][inputs]") {
  std::vector<std::byte> a(64), b(64), moved(64);
  persistent_inputs inputs({.check = address_check::on});
  const auto ids = inputs.add("input_ids", a);
  inputs.add("positions", b);
  const auto record = inputs.record_capture();
  REQUIRE(record.inputs.size() == 2);
  CHECK(record.inputs[0].address == a.data());
  CHECK(record.inputs[1].bytes == 64);
  CHECK_NOTHROW(inputs.verify(record));

  inputs.rebind(ids, moved);
  try {
    inputs.verify(record);
    FAIL("a moved buffer went unnoticed");
  } catch (const engine_error& e) {
    CHECK(code_of(e) == errc::address_changed);
    CHECK_THAT(e.what(), Catch::Contains("input_ids"));
  }
  std::error_code ec;
  inputs.verify(record, ec);
  CHECK(ec == errc::address_changed);

  // Same address, smaller extent: the graph would read past the buffer.
  inputs.rebind(ids, std::span(a).first(32));
  CHECK_THROWS_AS(inputs.verify(record), engine_error);
  inputs.rebind(ids, a);
  inputs.verify(record, ec);
  CHECK_FALSE(ec);
}

TEST_CASE("the address check is off by default", "[engine][dispatch][inputs]") {
  std::vector<std::byte> a(64), moved(64);
  persistent_inputs inputs;
  CHECK(inputs.check() == address_check::off);
  const auto id = inputs.add("input_ids", a);
  const auto record = inputs.record_capture();
  inputs.rebind(id, moved);
  CHECK_NOTHROW(inputs.verify(record));
  std::error_code ec = make_error_code(errc::overflow);
  inputs.verify(record, ec);
  CHECK_FALSE(ec);
}

TEST_CASE("persistent_inputs rejects bad registrations", "[engine][dispatch][inputs]") {
  std::vector<std::byte> a(8);
  persistent_inputs inputs;
  inputs.add("x", a);
  CHECK_THROWS_WITH(inputs.add("x", a), Catch::Contains("'x'"));
  CHECK_THROWS_AS(inputs.add("", a), engine_error);
  CHECK_THROWS_AS(inputs.add("y", {}), engine_error);
  CHECK_THROWS_AS(inputs.rebind(static_cast<buffer_id>(3), a), engine_error);
  CHECK_THROWS_AS(persistent_inputs({.check = static_cast<address_check>(4)}), engine_error);
}

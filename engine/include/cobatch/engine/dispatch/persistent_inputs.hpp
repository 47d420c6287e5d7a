// Persistent input buffers of captured graphs.
//
// A graph replay reads the addresses it read at capture, so a step's inputs
// are first copied into fixed buffers. This header describes those buffers,
// builds the copy-in plan of a step (which source span goes to which buffer,
// how many bytes of padding to zero-fill so padded rows read zeros, not the
// previous step's data) and, in a debug mode, checks that the buffers a graph
// reads have not moved since it was captured: a buffer reallocated after
// capture makes replays read freed memory without any error (the class of
// bug the check exists for).
//
// The plan is data: execute_on_host runs it with memcpy/memset where the
// buffers are host memory. The step runner does not use the plan for its
// copy-in: its buffers are device memory, filled from a staging block of the
// same layout with one stream-ordered copy per step (step_runner.cpp); it
// registers every field's device range here so that verify() still catches a
// buffer that moved after capture.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace cobatch::engine {

/// Names a registered buffer; dense, in registration order.
enum class buffer_id : std::uint32_t {};

/// Whether verify() compares addresses. Off by default: the check is a loop
/// over every captured input on every replay.
enum class address_check : std::uint8_t { off, on };

struct persistent_inputs_options {
  address_check check = address_check::off;
};

/// One input as a graph saw it at capture.
struct captured_input {
  buffer_id id{};
  const std::byte* address = nullptr;
  std::size_t bytes = 0;
};

/// What a graph read at capture; keep it beside the graph.
struct capture_record {
  std::vector<captured_input> inputs;
};

/// One input of a step: `source` goes to the front of buffer `id`, then zeros
/// up to `padded_bytes` (the size of the input at the padded batch size).
struct step_input {
  buffer_id id{};
  std::span<const std::byte> source;
  std::size_t padded_bytes = 0;
};

/// One copy of a copy-in plan: `source` to the front of `destination`, the
/// rest of `destination` zero-filled.
struct copy_op {
  buffer_id id{};
  std::span<const std::byte> source;
  std::span<std::byte> destination;
  std::size_t zero_fill_bytes() const noexcept { return destination.size() - source.size(); }
};

struct copy_plan {
  std::vector<copy_op> ops;
  std::size_t copy_bytes() const noexcept;
  std::size_t zero_fill_bytes() const noexcept;
};

/// Runs a plan with memcpy and memset: the host backend's copy-in.
void execute_on_host(const copy_plan& plan) noexcept;

class persistent_inputs {
 public:
  explicit persistent_inputs(persistent_inputs_options options = {});

  /// Registers a buffer. Throws engine_error(invalid_argument) for an empty
  /// name, a name already registered, or empty or null storage.
  buffer_id add(std::string name, std::span<std::byte> storage);

  /// Points a buffer at new storage (it was reallocated). Graphs captured
  /// before now still read the old address: verify() reports them.
  void rebind(buffer_id id, std::span<std::byte> storage);

  std::span<std::byte> storage(buffer_id id) const;
  const std::string& name(buffer_id id) const;
  std::size_t size() const noexcept { return buffers_.size(); }
  address_check check() const noexcept { return options_.check; }

  /// Every buffer's address and size now: call at capture, keep with the graph.
  capture_record record_capture() const;

  /// The copy-in plan of a step, into `out` (its capacity is reused, so a
  /// steady-state step allocates nothing). Throws engine_error:
  /// invalid_argument for an unknown id or one given twice; length_mismatch
  /// when a source is longer than its padded size; no_capacity when the padded
  /// size exceeds the buffer. Each message names the buffer.
  void plan_copy_in(std::span<const step_input> inputs, copy_plan& out) const;
  copy_plan plan_copy_in(std::span<const step_input> inputs) const;

  /// With address_check::on, checks that every input of `record` still has
  /// the address and size it had at capture; throws
  /// engine_error(address_changed) naming the first buffer that moved, or
  /// engine_error(invalid_argument) for an id not registered here. A no-op
  /// with address_check::off.
  void verify(const capture_record& record) const;
  /// The same, reporting through `ec` (cleared on success) instead of throwing.
  void verify(const capture_record& record, std::error_code& ec) const noexcept;

 private:
  struct buffer {
    std::string name;
    std::span<std::byte> storage;
  };
  const buffer& at(buffer_id id, std::string_view who) const;
  /// Index of the first input of `record` whose buffer moved, or npos; sets
  /// `unknown` when an id is not registered.
  std::size_t first_moved(const capture_record& record, bool& unknown) const noexcept;

  persistent_inputs_options options_;
  std::vector<buffer> buffers_;
};

}  // namespace cobatch::engine

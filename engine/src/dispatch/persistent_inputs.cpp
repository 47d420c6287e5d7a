#include "cobatch/engine/dispatch/persistent_inputs.hpp"

#include <cstdio>
#include <cstring>

#include "cobatch/engine/error.hpp"

namespace cobatch::engine {
namespace {

constexpr std::size_t npos = static_cast<std::size_t>(-1);

std::string address_text(const void* p) {
  char text[2 + 2 * sizeof(void*) + 1];
  std::snprintf(text, sizeof text, "%p", p);
  return text;
}

std::string quoted(const std::string& name, buffer_id id) {
  return "persistent input '" + name + "' (id " + std::to_string(static_cast<std::uint32_t>(id)) + ")";
}

}  // namespace

std::size_t copy_plan::copy_bytes() const noexcept {
  std::size_t n = 0;
  for (const auto& op : ops) n += op.source.size();
  return n;
}

std::size_t copy_plan::zero_fill_bytes() const noexcept {
  std::size_t n = 0;
  for (const auto& op : ops) n += op.zero_fill_bytes();
  return n;
}

void execute_on_host(const copy_plan& plan) noexcept {
  for (const auto& op : plan.ops) {
    if (!op.source.empty()) std::memmove(op.destination.data(), op.source.data(), op.source.size());
    if (op.zero_fill_bytes() != 0) std::memset(op.destination.data() + op.source.size(), 0, op.zero_fill_bytes());
  }
}

persistent_inputs::persistent_inputs(persistent_inputs_options options) : options_(options) {
  if (options.check != address_check::off && options.check != address_check::on)
    throw_engine_error(errc::unknown_mode, "persistent_inputs: unknown address_check value " +
                                               std::to_string(static_cast<unsigned>(options.check)));
}

buffer_id persistent_inputs::add(std::string name, std::span<std::byte> storage) {
  if (name.empty()) throw_engine_error(errc::invalid_argument, "persistent_inputs::add: a buffer needs a name");
  for (const auto& b : buffers_)
    if (b.name == name)
      throw_engine_error(errc::invalid_argument, "persistent_inputs::add: a buffer named '" + name +
                                                     "' is already registered");
  if (storage.empty() || storage.data() == nullptr)
    throw_engine_error(errc::invalid_argument,
                       "persistent_inputs::add: buffer '" + name + "' has no storage (null or 0 bytes)");
  const auto id = static_cast<buffer_id>(buffers_.size());
  buffers_.push_back({std::move(name), storage});
  return id;
}

const persistent_inputs::buffer& persistent_inputs::at(buffer_id id, std::string_view who) const {
  const auto i = static_cast<std::size_t>(id);
  if (i >= buffers_.size())
    throw_engine_error(errc::invalid_argument, std::string(who) + ": unknown buffer id " + std::to_string(i) +
                                                   " (" + std::to_string(buffers_.size()) + " registered)");
  return buffers_[i];
}

void persistent_inputs::rebind(buffer_id id, std::span<std::byte> storage) {
  const buffer& b = at(id, "persistent_inputs::rebind");
  if (storage.empty() || storage.data() == nullptr)
    throw_engine_error(errc::invalid_argument,
                       "persistent_inputs::rebind: " + quoted(b.name, id) + " given no storage (null or 0 bytes)");
  buffers_[static_cast<std::size_t>(id)].storage = storage;
}

std::span<std::byte> persistent_inputs::storage(buffer_id id) const {
  return at(id, "persistent_inputs::storage").storage;
}

const std::string& persistent_inputs::name(buffer_id id) const { return at(id, "persistent_inputs::name").name; }

capture_record persistent_inputs::record_capture() const {
  capture_record r;
  r.inputs.reserve(buffers_.size());
  for (std::size_t i = 0; i < buffers_.size(); ++i)
    r.inputs.push_back({static_cast<buffer_id>(i), buffers_[i].storage.data(), buffers_[i].storage.size()});
  return r;
}

void persistent_inputs::plan_copy_in(std::span<const step_input> inputs, copy_plan& out) const {
  out.ops.clear();
  out.ops.reserve(inputs.size());
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    const step_input& in = inputs[k];
    const buffer& b = at(in.id, "persistent_inputs::plan_copy_in");
    for (std::size_t j = 0; j < k; ++j)
      if (inputs[j].id == in.id)
        throw_engine_error(errc::invalid_argument,
                           "persistent_inputs::plan_copy_in: " + quoted(b.name, in.id) + " is given twice");
    if (in.source.size() > in.padded_bytes)
      throw_engine_error(errc::length_mismatch,
                         "persistent_inputs::plan_copy_in: " + quoted(b.name, in.id) + " gets " +
                             std::to_string(in.source.size()) + " bytes, more than its padded size " +
                             std::to_string(in.padded_bytes));
    if (in.padded_bytes > b.storage.size())
      throw_engine_error(errc::no_capacity,
                         "persistent_inputs::plan_copy_in: " + quoted(b.name, in.id) + " holds " +
                             std::to_string(b.storage.size()) + " bytes; the step needs " +
                             std::to_string(in.padded_bytes));
    out.ops.push_back({in.id, in.source, b.storage.first(in.padded_bytes)});
  }
}

copy_plan persistent_inputs::plan_copy_in(std::span<const step_input> inputs) const {
  copy_plan plan;
  plan_copy_in(inputs, plan);
  return plan;
}

std::size_t persistent_inputs::first_moved(const capture_record& record, bool& unknown) const noexcept {
  unknown = false;
  for (std::size_t k = 0; k < record.inputs.size(); ++k) {
    const captured_input& c = record.inputs[k];
    const auto i = static_cast<std::size_t>(c.id);
    if (i >= buffers_.size()) {
      unknown = true;
      return k;
    }
    const auto& s = buffers_[i].storage;
    if (s.data() != c.address || s.size() != c.bytes) return k;
  }
  return npos;
}

void persistent_inputs::verify(const capture_record& record) const {
  if (options_.check == address_check::off) return;
  bool unknown = false;
  const std::size_t k = first_moved(record, unknown);
  if (k == npos) return;
  const captured_input& c = record.inputs[k];
  if (unknown)
    throw_engine_error(errc::invalid_argument,
                       "persistent_inputs::verify: the capture record names buffer id " +
                           std::to_string(static_cast<std::uint32_t>(c.id)) + ", which is not registered here");
  const buffer& b = buffers_[static_cast<std::size_t>(c.id)];
  throw_engine_error(errc::address_changed,
                     "persistent_inputs::verify: " + quoted(b.name, c.id) + " was captured at " +
                         address_text(c.address) + " (" + std::to_string(c.bytes) + " bytes) but is now at " +
                         address_text(b.storage.data()) + " (" + std::to_string(b.storage.size()) +
                         " bytes); a replay would read the old memory");
}

void persistent_inputs::verify(const capture_record& record, std::error_code& ec) const noexcept {
  ec.clear();
  if (options_.check == address_check::off) return;
  bool unknown = false;
  if (first_moved(record, unknown) == npos) return;
  ec = unknown ? make_error_code(errc::invalid_argument) : make_error_code(errc::address_changed);
}

}  // namespace cobatch::engine

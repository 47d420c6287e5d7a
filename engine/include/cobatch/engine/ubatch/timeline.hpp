// timeline: what each micro-batch did, when, on which lane (the host thread,
// each stream), for looking at overlap rather than inferring it from totals.
//
// Off by default: a scheduler with no timeline pays one pointer test per
// switch. When on, device spans are bracketed by host functions enqueued on
// the stream, so their times are when the stream reached the marks (the real
// start and end of the work between them, on either backend), at a cost of
// two enqueues per span; host spans are read from the steady clock on the
// loop's thread.
#pragma once

#include <cobatch/gpu/stream.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace cobatch::engine {

/// One interval of one micro-batch on one lane. Times are microseconds since
/// the timeline's origin. A span whose end mark never ran (its stream failed)
/// has end_us < 0 and is left out of the exports.
struct timeline_span {
  std::string lane;
  std::int32_t ubatch = 0;
  std::string label;
  double begin_us = -1.0;
  double end_us = -1.0;

  double duration_us() const noexcept { return end_us - begin_us; }
  bool complete() const noexcept { return begin_us >= 0.0 && end_us >= begin_us; }
};

struct svg_options {
  int width = 960;        ///< pixels, time axis included
  int lane_height = 28;   ///< pixels per lane
  std::string title;      ///< drawn above the lanes when not empty
};

class timeline {
 public:
  using clock = std::chrono::steady_clock;
  /// Identifies a device span between its begin and end marks.
  using span_id = std::size_t;

  timeline() : origin_(clock::now()) {}
  timeline(const timeline&) = delete;
  timeline& operator=(const timeline&) = delete;

  /// Forgets every span and restarts the clock. Marks still queued on streams
  /// from before the reset must have run (wait for the streams first).
  void reset();

  clock::time_point origin() const noexcept { return origin_; }

  /// A span measured on the host, e.g. a micro-batch's run between switches.
  void add_host_span(std::string_view lane, std::int32_t ubatch, std::string_view label,
                     clock::time_point begin, clock::time_point end);

  /// Enqueues the begin mark of a device span on `s`: the span starts when
  /// the stream reaches this point.
  span_id begin_device_span(gpu::stream_ref s, std::string_view lane, std::int32_t ubatch,
                            std::string_view label);
  /// Enqueues the end mark of span `id` on `s` (the stream its begin was on);
  /// a non-empty `label` replaces the one given at the begin.
  void end_device_span(gpu::stream_ref s, span_id id, std::string_view label = {});

  /// A copy of every span so far, in the order they were opened.
  std::vector<timeline_span> spans() const;
  std::size_t size() const;

  /// Chrome trace-event JSON ("X" events, one thread per lane), which
  /// Perfetto and chrome://tracing open.
  void write_chrome_trace(std::ostream& out) const;
  /// A self-contained SVG: one row per lane, one colour per micro-batch.
  void write_svg(std::ostream& out, const svg_options& options = {}) const;

 private:
  double since_origin_us(clock::time_point t) const noexcept {
    return std::chrono::duration<double, std::micro>(t - origin_).count();
  }
  void set_time(span_id id, bool begin, clock::time_point t);

  clock::time_point origin_;
  mutable std::mutex mutex_;  // marks run on stream threads
  std::vector<timeline_span> spans_;
};

}  // namespace cobatch::engine

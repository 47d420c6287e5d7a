// sse: server-sent events, as OpenAI streams completions, carried in HTTP/1.1
// chunked transfer coding so that the connection stays open for the next
// request. Everything the engine produced since the last write goes out as
// one chunk holding one event per payload.
#pragma once

#include <string>
#include <string_view>

namespace cobatch::server {

class sse_batch {
 public:
  /// `data: <payload>\n\n`. The payload is one line of JSON (no newlines).
  void add(std::string_view payload);
  /// `data: [DONE]\n\n`, OpenAI's end of stream.
  void add_done();
  bool empty() const noexcept { return events_.empty(); }
  /// Moves the events into `out` as one HTTP chunk and empties the batch.
  void take_chunk(std::string& out);

 private:
  std::string events_;
};

/// The chunked coding's last chunk (no trailers).
inline constexpr std::string_view last_chunk = "0\r\n\r\n";

}  // namespace cobatch::server

#include "sse.hpp"

#include <cstdio>

namespace cobatch::server {

void sse_batch::add(std::string_view payload) {
  events_ += "data: ";
  events_ += payload;
  events_ += "\n\n";
}

void sse_batch::add_done() { events_ += "data: [DONE]\n\n"; }

void sse_batch::take_chunk(std::string& out) {
  if (events_.empty()) return;
  char size[24];
  const int n = std::snprintf(size, sizeof size, "%zx\r\n", events_.size());
  out.append(size, static_cast<std::size_t>(n));
  out += events_;
  out += "\r\n";
  events_.clear();
}

}  // namespace cobatch::server

#include "metrics.hpp"
#include "sse.hpp"

#include <catch2/catch.hpp>

using namespace cobatch::server;

TEST_CASE("sse_batch frames events as one HTTP chunk", "[server][sse]") {
  sse_batch b;
  b.add(R"({"a":1})");
  b.add_done();
  std::string out;
  b.take_chunk(out);
  const std::string events = "data: {\"a\":1}\n\ndata: [DONE]\n\n";
  CHECK(out == "1d\r\n" + events + "\r\n");
  CHECK(events.size() == 0x1d);
  CHECK(b.empty());
}

TEST_CASE("histogram renders cumulative buckets, sum and count", "[server][metrics]") {
  histogram h{0.1, 1.0};
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5);
  std::string out;
  h.render(out, "x_seconds", "help");
  CHECK(out.find("x_seconds_bucket{le=\"0.1\"} 1\n") != std::string::npos);
  CHECK(out.find("x_seconds_bucket{le=\"1\"} 2\n") != std::string::npos);
  CHECK(out.find("x_seconds_bucket{le=\"+Inf\"} 3\n") != std::string::npos);
  CHECK(out.find("x_seconds_count 3\n") != std::string::npos);
  CHECK(out.find("# TYPE x_seconds histogram\n") != std::string::npos);
}

TEST_CASE("token_rate counts whole slices of the window", "[server][metrics]") {
  token_rate r;
  const auto t0 = token_rate::clock::now();
  r.add(49, t0);
  // Until its slice is over, tokens do not count (the slice is still filling).
  CHECK(r.per_second(t0) == 0.0);
  CHECK(r.per_second(t0 + std::chrono::milliseconds(200)) == Approx(49 / 4.9));
  CHECK(r.per_second(t0 + std::chrono::seconds(10)) == 0.0);
}

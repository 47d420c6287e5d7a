#include "request_parser.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace cobatch::server;

TEST_CASE("request_parser stops at the end of one request, leaving pipelined bytes", "[server][http]") {
  request_parser p({1024, 1024});
  const std::string two =
      "POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
      "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n";
  auto r = p.feed(two);
  REQUIRE(r.status == parse_status::complete);
  CHECK(p.request().method == http_method::post);
  CHECK(p.request().path == "/v1/completions");
  CHECK(p.request().query == "x=1");
  CHECK(p.request().body == "{}");
  CHECK(p.request().header("host") == "a");
  CHECK(p.request().keep_alive);
  p.reset();
  auto r2 = p.feed(std::string_view(two).substr(r.consumed));
  REQUIRE(r2.status == parse_status::complete);
  CHECK(p.request().method == http_method::get);
  CHECK_FALSE(p.request().keep_alive);
  CHECK(r.consumed + r2.consumed == two.size());
}

TEST_CASE("request_parser takes a request byte by byte", "[server][http]") {
  request_parser p({1024, 1024});
  const std::string req = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
  for (std::size_t i = 0; i + 1 < req.size(); ++i) {
    auto r = p.feed(std::string_view(req).substr(i, 1));
    REQUIRE(r.status == parse_status::need_more);
    CHECK(p.started());
  }
  CHECK(p.feed(std::string_view(req).substr(req.size() - 1)).status == parse_status::complete);
}

TEST_CASE("request_parser refuses oversized heads and bodies as they arrive", "[server][http]") {
  request_parser p({256, 100});
  CHECK(p.feed("GET /" + std::string(300, 'a')).status == parse_status::header_too_large);
  p.reset();
  CHECK(p.feed("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n").status == parse_status::body_too_large);
  p.reset();
  CHECK(p.feed("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + std::string(101, 'a')).status ==
        parse_status::body_too_large);
  p.reset();
  CHECK(p.feed("GARBAGE\r\n\r\n").status == parse_status::bad_request);
  CHECK_FALSE(p.error_description().empty());
}

TEST_CASE("request_parser refuses HTTP versions other than 1.0 and 1.1", "[server][http]") {
  request_parser p({1024, 1024});
  CHECK(p.feed("GET / HTTP/9.9\r\n\r\n").status == parse_status::bad_request);
  CHECK(p.error_description().find("version") != std::string_view::npos);
  p.reset();
  CHECK(p.feed("GET / HTTP/1.0\r\n\r\n").status == parse_status::complete);
  CHECK_FALSE(p.request().keep_alive);
}

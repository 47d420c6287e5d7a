#include "text_stream.hpp"

#include <catch2/catch.hpp>

using cobatch::server::sanitize_utf8;
using cobatch::server::text_stream;

TEST_CASE("sanitize_utf8 keeps valid text and replaces each ill-formed subpart", "[server][text]") {
  CHECK(sanitize_utf8("héllo €", true) == "héllo €");
  CHECK(sanitize_utf8("a\xFF" "b", true) == "a\xEF\xBF\xBD" "b");
  // An overlong encoding and a surrogate are ill-formed.
  CHECK(sanitize_utf8("\xC0\xAF", true) == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(sanitize_utf8("\xED\xA0\x80", true) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  // A cut-off sequence is held back until the end of the stream.
  std::size_t held = 0;
  CHECK(sanitize_utf8("ab\xE2\x82", false, &held) == "ab");
  CHECK(held == 2);
  CHECK(sanitize_utf8("ab\xE2\x82", true) == "ab\xEF\xBF\xBD");
}

TEST_CASE("text_stream releases a character split across tokens once whole", "[server][text]") {
  text_stream t;
  t.append("x\xE2");
  CHECK(t.take_ready() == "x");
  t.append("\x82");
  CHECK(t.take_ready().empty());
  t.append("\xAC");
  CHECK(t.take_ready() == "€");
  CHECK(t.take_rest().empty());
}

TEST_CASE("text_stream cuts at a stop sequence and holds back its possible start", "[server][text]") {
  text_stream t({"STOP", "\n\n"});
  CHECK_FALSE(t.append("hello S"));
  CHECK(t.take_ready() == "hello ");  // "S" may begin "STOP"
  CHECK_FALSE(t.append("T"));
  CHECK(t.take_ready().empty());
  CHECK_FALSE(t.append("X"));  // "STX": not a stop after all
  CHECK(t.take_ready() == "STX");
  CHECK(t.append("a\n\nb"));
  CHECK(t.stopped());
  CHECK(t.take_ready() == "a");
  CHECK(t.append("more"));  // nothing counts after a stop
  CHECK(t.take_rest().empty());
}

TEST_CASE("text_stream finds a stop sequence spanning appends", "[server][text]") {
  text_stream t({"abc"});
  CHECK_FALSE(t.append("xa"));
  CHECK_FALSE(t.append("b"));
  CHECK(t.append("cdef"));
  CHECK(t.take_rest() == "x");
}

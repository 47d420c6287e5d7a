// server_options: the command line of cobatch_server.
#pragma once

#include "engine_service.hpp"
#include "limits.hpp"

#include <optional>
#include <string>

namespace cobatch::server {

struct server_options {
  std::string host = "127.0.0.1";
  unsigned short port = 8000;
  engine_options engine;
  server_limits limits;
  bool help = false;
};

/// Parses argv. Throws std::invalid_argument naming the option and the value
/// on a bad one.
server_options parse_server_options(int argc, char** argv);

/// The --help text.
std::string server_usage(const char* program);

}  // namespace cobatch::server

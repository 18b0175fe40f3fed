// The one command-line parser: fills the option structs of
// server/model/options.hpp from argv and GILGAMESH_* variables.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include "server/model/options.hpp"

namespace gilgamesh {

struct ParseOutcome {
  std::optional<ServerConfig> config;  // set: serve with it
  int exit_code = 0;                   // else: exit with this (0 after --help)
  bool show_version = false;           // --version: the caller prints it, exits 0
};

// Parses argv. Prints --help itself; on a bad flag or value prints one line
// to stderr and returns exit_code 2. Resolves the 0 defaults of the options.
ParseOutcome parse_command_line(int argc, char** argv);

// --max-connections when not given: kDefaultMaxConnections, or fewer when the
// file descriptor limit `fd_limit` leaves less room beside the workers' own.
constexpr std::size_t kDefaultMaxConnections = 4096;
std::size_t default_max_connections(std::size_t fd_limit, int workers);

// --root-path as the app sees it: `root_path` without its trailing '/'s; false (left as it is)
// when it does not start with '/'.
bool normalize_root_path(std::string& root_path);

// Why --loop uvloop cannot be served on `strategy` (any but processes), in one line;
// `by_auto`: --strategy auto chose it.
std::string uvloop_needs_processes(Strategy strategy, bool by_auto);

}  // namespace gilgamesh

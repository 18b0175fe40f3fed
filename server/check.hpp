// What the start-up probe (pyworkers/embedding/probe.hpp) is used for on the server side:
//   - the guard: before in-process workers start, the app's import is proven
//     survivable in a disposable child; a crash or a refusal becomes a clear error;
//   - `gilgamesh check`: the probe for every strategy and Python build, as a table
//     with a recommendation (or one JSON document);
//   - `--strategy auto`: the load part of the check, then the best strategy that
//     serves the app.
#pragma once

#include <optional>
#include <string>

#include "server/model/executor.hpp"
#include "pyworkers/embedding/probe.hpp"

namespace gilgamesh {

// Maps a request to a route of the loaded app, with the server's own Router.
RouteResolver router_resolver();

// The binary of a Python build: this one, or its sibling (gilgamesh / gilgamesh-ft);
// empty if that build was not made.
std::string build_binary(PythonBuild build);

// Before in-process workers start: probes the app's import (cached) as they would make it
// (`subinterpreters`: in an isolated sub-interpreter; `threads`, `free-threaded`: in the
// main interpreter) and returns the message to refuse the start with when that import
// crashes the interpreter or is refused, naming every module and what works; nothing
// when the workers may start. `processes` needs none: its zygote imports the app.
std::optional<StartupError> guard_import(const ServerConfig& config);

// Before a restart in place (SIGHUP): the app as it is on disk now, imported in a disposable
// child as this strategy's workers would import it (`processes` too: a server whose zygote
// cannot import the app would not start). Nothing: it loads; else why the restart is refused.
std::optional<StartupError> restart_blocker(const ServerConfig& config);

// `--strategy auto`: the strategy to serve the app with, and the one line that says why.
struct AutoChoice {
  Strategy strategy;
  std::string reason;
};
AutoChoice choose_strategy(const ServerConfig& config);

// `gilgamesh check ...` (argv[1] is "check"): prints the table or the JSON, returns the
// exit status (0: some strategy serves the app, 1: none, 2: bad usage).
int check_main(int argc, char** argv);

}  // namespace gilgamesh

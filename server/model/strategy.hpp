// The four ways Python runs the handlers, named once. Below the command line
// nothing compares a strategy's name: code asks for the Strategy, or for what
// the strategy's WorkerFactory declares (pyworkers/pool/worker.hpp).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gilgamesh {

enum class Strategy {
  subinterpreters,  // one own-GIL sub-interpreter per worker (PEP 684)
  threads,          // worker threads in the main interpreter, one GIL (the baseline)
  free_threaded,    // worker threads in the main interpreter of a PEP 703 build
  processes,        // forked worker processes, each its own interpreter
  automatic,        // --strategy auto: resolved at start-up by `gilgamesh check`'s probe
};

// "subinterpreters", "threads", "free-threaded", "processes", "auto".
std::string_view strategy_name(Strategy s);
std::optional<Strategy> parse_strategy(std::string_view name);
// Every name parse_strategy() accepts, in the order --help lists them.
std::vector<std::string> strategy_names();

// The CPython build a strategy runs on when --python-build is not given.
enum class PythonBuild { standard, free_threaded };
std::string_view python_build_name(PythonBuild b);  // "default" | "free-threaded"
std::optional<PythonBuild> parse_python_build(std::string_view name);

}  // namespace gilgamesh

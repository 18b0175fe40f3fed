// The start-up probe: the app imported in a disposable child process, the way a
// worker of a strategy would import it, so that an import that crashes CPython
// (3.13.5's single-phase-init bugs, gh-138045 and gh-144601, or any extension's)
// ends the child and not the server. `gilgamesh check` and `--strategy auto` read
// the same findings for every strategy.
//
// The child is this binary executed again with kProbeFlag and a JSON request, as
// the zygote is. It writes to fd kProbeFd, one line each, as things happen:
//   begin NAME\tIMPORTER IMPORTER ...   an import begins (innermost importer first)
//   failed NAME\tIMPORTER ...            an import begun before ended without its module
//   files [JSON]                         the files of every module imported (the cache's stamps)
//   result {JSON}                        its findings (ProbeResult::from_json), last
// A child that ends without a result line died during (or after) the import named
// by its last begin line. Its stdout and stderr go to a file whose tail explains a
// crash ("free(): invalid pointer").
//
// Modes:
//   subinterpreter    (--preload: the app in the main interpreter first, then) the
//                     app in an isolated own-GIL sub-interpreter, as a worker of
//                     `subinterpreters`; when refused, every C extension of the app
//                     that such an interpreter refuses is listed (the app imported in
//                     the main interpreter, then each extension's module object made
//                     in a fresh sub-interpreter, where CPython refuses a single-phase
//                     one before running its PyInit again);
//   main_interpreter  the app in the main interpreter: `threads`, `processes`, and
//                     `free-threaded` (run by the free-threaded binary).
//
// Results are cached (not a crash or a hang: those are probed again each time),
// keyed by the binary, its libpython, the request, the working directory and the
// environment; an entry holds while the path entries and every file the import
// loaded keep their modification times.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh {

constexpr const char* kProbeFlag = "--internal-probe";
constexpr int kProbeFd = 3;

enum class ProbeMode { subinterpreter, main_interpreter };

struct ProbeRequest {
  ProbeMode mode = ProbeMode::subinterpreter;
  ServerConfig config;                // the app, pythonpath, preload, and the strategy (for messages)
  std::vector<std::string> requests;  // "METHOD /path?query": called in-process for a rate
};

// A module that stops the app from loading, and why ("single-phase init", "no
// per-interpreter GIL", "needs glibc 2.38", ...).
struct ModuleProblem {
  std::string module;
  std::string why;
};

struct RequestRate {
  std::string request;
  int status = 0;
  double per_second = 0;  // single thread, in-process, no HTTP
  std::string error;      // the request could not be made (no such route, ...)
};

struct ProbeResult {
  enum class Outcome { loads, refused, failed, crashed, timed_out };
  Outcome outcome = Outcome::failed;
  std::string message;  // refused/failed: as the server would say it; crashed: what died
  std::string detail;   // a traceback, or the tail of the child's output
  std::vector<ModuleProblem> problems;
  // crashed / timed_out: the import to blame, and who imported it (innermost first): the
  // last one begun, or, when the process died outside the app's import after an import
  // of it had failed (CPython's gh-144601 crashes while the error is handled), that one.
  std::string last_import;
  std::vector<std::string> import_chain;
  std::string died_importing;  // set when last_import had failed: the import under way then
  std::string wait_status;  // "killed by signal 6 (SIGABRT)"
  double import_seconds = 0;
  std::int64_t memory_bytes = -1;  // what the app's interpreter added (-1: not measured)
  bool gil_enabled = true;
  std::vector<std::string> gil_warnings;
  std::vector<RequestRate> rates;
  std::vector<std::string> shared_state;  // module globals the requests changed
  std::string python;                     // "3.13.5 (default build)"
  // An ASGI app under processes, where it loads: the event loop its worker processes would
  // run with --loop auto ("uvloop" or "asyncio"), uvloop's version, or why it did not import.
  std::string event_loop;
  std::string uvloop_version;
  std::string uvloop_error;
  bool cached = false;
  double probe_seconds = 0;  // what this probe cost the caller (cache hit: the check)

  nlohmann::json to_json() const;
  static ProbeResult from_json(const nlohmann::json& j);
  static const char* outcome_name(Outcome o);
};

// Runs the probe: the child `binary` (this binary or its free-threaded sibling),
// or the cached result. Blocks until the child ends or `timeout` passes (then it
// is killed: timed_out). Never throws for what the child does.
ProbeResult probe_app(const std::string& binary, const ProbeRequest& request,
                      std::chrono::seconds timeout = std::chrono::seconds(120), bool use_cache = true);

// The child's main(), for a command line that starts with kProbeFlag. `resolve`
// maps a request to a route of the loaded app (the router lives in server/).
struct ResolvedRoute {
  std::size_t route_index = 0;
  std::vector<PathParam> params;
};
using RouteResolver = std::function<std::optional<ResolvedRoute>(
    const std::vector<RouteInfo>& routes, const std::string& method, const std::string& path)>;
[[noreturn]] void probe_main(int argc, char** argv, const RouteResolver& resolve);

// The names of `problems`, joined ("lxml.etree, PIL._imaging"); past five, the first
// three and how many more ("falcon.app, falcon.errors, falcon.uri and 35 more falcon modules").
std::string problem_modules(const std::vector<ModuleProblem>& problems);

// The problems grouped by why, each group's names as problem_modules gives them:
// "PIL._imaging: single-phase init; lxml.etree: no per-interpreter GIL", or
// parenthesized "PIL._imaging (single-phase init), lxml.etree (no per-interpreter GIL)".
enum class ProblemStyle { colon, parenthesized };
std::string describe_problems(const std::vector<ModuleProblem>& problems, ProblemStyle style = ProblemStyle::colon);

}  // namespace gilgamesh

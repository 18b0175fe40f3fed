// Every option an operator tunes, with its default beside it, and the one
// command-line parser that fills it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gilgamesh {

struct ServerConfig {
  std::string app = "handlers.demo";           // Python module that registers the routes, or
                                               // MODULE:CALLABLE of a WSGI app (then wsgi is set)
  bool wsgi = false;                           // --wsgi: app is a PEP 3333 application
  std::string root_path;                       // WSGI SCRIPT_NAME: the prefix the app is mounted at
  std::size_t max_response = std::size_t{64} << 20;  // bytes; larger response bodies become 500
  std::vector<std::string> pythonpath;         // prepended to sys.path (the working dir follows)
  std::string strategy = "subinterpreters";    // subinterpreters | threads | free-threaded | processes
                                               // | auto (gilgamesh check picks, at start-up)
  std::string python_build;                    // default | free-threaded; empty: the strategy's own
  int workers = 0;                             // 0: number of CPUs
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  int io_threads = 0;                          // 0: 1 per 4 CPUs, at least 1
  int worker_spin_us = -1;                     // µs an idle worker watches the queue before it
                                               // sleeps; -1: 50 when workers + I/O threads
                                               // <= CPUs, else 0
  std::size_t max_body = 1024 * 1024;          // bytes; larger bodies get 413
  std::size_t max_queue = 1024;                // queued jobs before 503
  std::size_t max_connections = 0;             // open connections; past it new ones are closed
                                               // at once (0: 4096, less if the fd limit is lower)
  double header_timeout = 10.0;                // s from a request's first byte to its last header
  double keepalive_timeout = 5.0;              // s an idle keep-alive connection is kept
  double graceful_timeout = 30.0;              // s to finish in-flight requests on SIGTERM
  double request_timeout = 30.0;               // s from arrival to response, else 504 (and the
                                               // handler is interrupted, or its worker replaced)
  double shutdown_delay = 0.0;                 // s after SIGTERM with /readyz 503 before the
                                               // listener closes and the drain starts
  int max_abandoned = 0;                       // stuck handler threads left running before the
                                               // pool stops replacing them (0: 2 x workers)
  unsigned max_requests = 0;                   // recycle a worker after N requests (0: never)
  unsigned max_requests_jitter = 0;            // + random 0..J per recycle
  bool allow_gil = false;                      // free-threaded: run even if the GIL came back
  bool preload = false;                        // import the app in the main interpreter before
                                               // the workers start (gunicorn's --preload)
  bool access_log = false;                     // one info line per request
  bool debug = false;                          // error bodies carry the exception and traceback
  bool dashboard = true;                       // serve GET /dashboard and GET /events
  std::string log_level = "info";              // trace | debug | info | warn | error | critical | off
};

struct ParseOutcome {
  std::optional<ServerConfig> config;  // set: serve with it
  int exit_code = 0;                   // else: exit with this (0 after --help)
  bool show_version = false;           // --version: the caller prints it, exits 0
};

// Parses argv. Prints --help itself; on a bad flag or value prints one line
// to stderr and returns exit_code 2. Resolves the 0 defaults above.
ParseOutcome parse_command_line(int argc, char** argv);

// --max-connections when not given: kDefaultMaxConnections, or fewer when the
// file descriptor limit `fd_limit` leaves less room beside the workers' own.
constexpr std::size_t kDefaultMaxConnections = 4096;
std::size_t default_max_connections(std::size_t fd_limit, int workers);

}  // namespace gilgamesh

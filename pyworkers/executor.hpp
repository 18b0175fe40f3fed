// The one interface between the HTTP layer and Python. The HTTP layer hands a
// Job over as plain C++ data and gets plain C++ data back; every strategy
// (sub-interpreters, threads, free-threaded, processes) implements Executor.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace gilgamesh {

using Clock = std::chrono::steady_clock;

struct Header {
  std::string name;
  std::string value;
};

// A value the router captured from a route pattern such as /items/<int:id>.
// The value is the matched path text; the converter says what Python makes of it.
struct PathParam {
  enum class Converter : std::uint8_t { string, integer, number, path };
  std::string name;
  std::string value;
  Converter converter = Converter::string;
};

struct HttpRequestData {
  std::string method;
  std::string path;          // decoded target path, without the query
  std::string query_string;  // raw, after '?', without '#...'
  std::string request_id;
  std::vector<Header> headers;
  std::string body;
  std::vector<PathParam> path_params;  // captured by the router, in pattern order
  // The connection, for WSGI's environ (REMOTE_ADDR, SERVER_NAME, ...).
  std::string target;                  // the request target as received, without '#...'
  std::string http_version = "HTTP/1.1";
  std::string remote_addr;
  std::uint16_t remote_port = 0;
  std::string server_addr;             // the local address the request came in on
  std::uint16_t server_port = 0;
};

struct HttpResponseData {
  int status = 200;
  std::string content_type;      // empty: no Content-Type header
  std::vector<Header> headers;   // extra headers from the handler
  std::string body;
};

struct RouteInfo {
  // An exact path ("/hello"), a pattern with parameters ("/items/<int:id>"), or
  // "*": every path and method the server does not answer itself (a WSGI app).
  std::string path;
  std::vector<std::string> methods;  // upper case, as registered; empty for "*"
  std::string doc;                   // first line of the handler's docstring
};

struct Job {
  HttpRequestData request;
  std::size_t route_index = 0;  // index into Executor::routes()
  Clock::time_point deadline;   // a job still queued at its deadline is answered 504
  // Called exactly once, from a worker-side thread, never with a Python lock held.
  std::function<void(HttpResponseData&&)> complete;
};

enum class SubmitResult { accepted, queue_full, stopping };

struct ExecutorConfig {
  std::string strategy = "subinterpreters";
  int workers = 1;
  std::string app = "handlers.demo";    // route module, or MODULE:CALLABLE when wsgi
  bool wsgi = false;                    // app is a PEP 3333 application
  std::string root_path;                // WSGI: SCRIPT_NAME, the prefix the app is mounted at
  std::size_t max_response = std::size_t{64} << 20;  // larger response bodies become 500
  std::vector<std::string> pythonpath;  // prepended to sys.path in every interpreter
  std::size_t max_queue = 1024;
  std::size_t max_body = 1 << 20;       // largest request body a worker must carry
  unsigned max_requests = 0;            // recycle a worker after this many requests (0: never)
  unsigned max_requests_jitter = 0;
  bool allow_gil = false;               // free-threaded: run even if an extension enabled the GIL
  std::string python_build;             // "default" or "free-threaded" (the one linked in)
};

struct ExecutorInfo {
  std::string strategy;
  int workers = 0;
  std::string python_version;
  std::string build;  // "default" or "free-threaded"
  bool gil_enabled = true;
};

// Thrown by start() when the app cannot run under the chosen strategy. The
// message is for the user: it names the module, the reason, and what would work.
class StartupError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Executor {
 public:
  virtual ~Executor() = default;

  // Starts every worker and imports the app in each. Blocks until all are
  // ready. Throws StartupError.
  virtual void start() = 0;
  // The handler routes, identical in every worker. Valid after start().
  virtual const std::vector<RouteInfo>& routes() const = 0;
  // Thread-safe; never blocks on Python. On queue_full or stopping the job is
  // handed back untouched (complete() is not called).
  virtual SubmitResult submit(Job& job) = 0;
  // Refuses new jobs, lets queued and running ones finish until `deadline`,
  // answers what is left 503, and ends every worker (and interpreter).
  // Returns false if some handler still ran at the deadline: its worker was
  // abandoned, and the process must exit without finalizing Python.
  virtual bool stop(Clock::time_point deadline) = 0;

  virtual ExecutorInfo info() const = 0;
  // Live figures for /stats: queue_depth, busy_workers, per-worker details.
  virtual nlohmann::json stats() const = 0;
};

// Picks the strategy named in config.strategy. Called before any thread of
// the server starts (the processes strategy forks here). Throws StartupError
// for a strategy this binary cannot run.
std::unique_ptr<Executor> make_executor(const ExecutorConfig& config);

// Strategies this binary can run, and the Python it embeds.
std::vector<std::string> available_strategies();
std::string embedded_python_version();
std::string embedded_python_build();

}  // namespace gilgamesh

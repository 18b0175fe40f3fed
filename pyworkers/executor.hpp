// The one interface between the HTTP layer and Python. The HTTP layer hands a
// Job over as plain C++ data and gets plain C++ data back; every strategy
// (sub-interpreters, threads, free-threaded, processes) runs behind it, through
// the one WorkerPool (worker_pool.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
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
  // A 504 the server made because --timeout passed (not a handler's own 504):
  // counted as a deadline exceeded whichever side noticed first.
  bool deadline_exceeded = false;
};

struct RouteInfo {
  // An exact path ("/hello"), a pattern with parameters ("/items/<int:id>"), or
  // "*": every path and method the server does not answer itself (a WSGI app).
  std::string path;
  std::vector<std::string> methods;  // upper case, as registered; empty for "*"
  std::string doc;                   // first line of the handler's docstring
};

// Who is waiting for a job's answer: the HTTP connection that submitted it.
class JobOwner {
 public:
  virtual ~JobOwner() = default;
  // Called exactly once per job, from a worker-side thread, never with a Python
  // lock held. `token` is the one the job carried.
  virtual void job_done(std::uint64_t token, HttpResponseData&& response) = 0;
  // True once the client has gone away: a job not yet started is not run.
  virtual bool client_gone() const = 0;
};

struct Job {
  HttpRequestData request;
  std::size_t route_index = 0;  // index into Executor::routes()
  Clock::time_point deadline;   // the response is due by then (504 after it)
  Clock::time_point queued_at;  // set by the executor
  // Not owned: a job (an abandoned handler may hold one for hours) never keeps
  // its connection alive. A job whose owner is gone completes into nothing.
  std::weak_ptr<JobOwner> owner;
  std::uint64_t token = 0;

  void complete(HttpResponseData&& response) {
    if (auto o = owner.lock()) o->job_done(token, std::move(response));
  }
  bool client_gone() const {
    auto o = owner.lock();
    return !o || o->client_gone();
  }
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
  std::chrono::nanoseconds worker_spin{0};  // an idle worker watches the queue this long before it sleeps
  std::size_t max_body = 1 << 20;       // largest request body a worker must carry
  unsigned max_requests = 0;            // recycle a worker after this many requests (0: never)
  unsigned max_requests_jitter = 0;
  int max_abandoned = 0;                // handler threads left running past their deadline before
                                        // the pool stops replacing them (0: 2 x workers)
  bool allow_gil = false;               // free-threaded: run even if an extension enabled the GIL
  bool preload = false;                 // subinterpreters: import the app in the main interpreter first
  std::string strategy_reason;          // --strategy auto: why this strategy was picked (else empty)
  std::string python_build;             // "default" or "free-threaded" (the one linked in)
  bool debug = false;                   // a handler's unexpected exception: its type, text and
                                        // traceback in the 500 body (else only in the log)
};

// For the processes strategy's zygote, which is started by executing the binary
// again: the config travels as JSON on its command line.
nlohmann::json to_json(const ExecutorConfig& config);
ExecutorConfig executor_config_from_json(const nlohmann::json& j);

struct ExecutorInfo {
  std::string strategy;
  int workers = 0;
  std::string python_version;
  std::string build;  // "default" or "free-threaded"
  bool gil_enabled = true;
  std::string strategy_reason;  // --strategy auto: why `strategy` was picked (else empty)
};

// Whether the executor can take work now (GET /readyz), and why not.
struct Readiness {
  enum class State { starting, ready, degraded, stopping } state = State::starting;
  std::string reason;  // empty when ready
  bool ready() const { return state == State::ready; }
  // Inline: the HTTP layer (and its fuzz target) names states without the Python layer.
  static const char* name(State s) {
    switch (s) {
      case State::starting: return "starting";
      case State::ready: return "ready";
      case State::degraded: return "degraded";
      case State::stopping: return "draining";
    }
    return "?";
  }
};

// Thrown by start() when the app cannot run under the chosen strategy. The
// message is for the user: it names the module, the reason, and what would
// work; `detail` holds what helps a developer (the import's traceback).
class StartupError : public std::runtime_error {
 public:
  explicit StartupError(const std::string& message, std::string detail = {})
      : std::runtime_error(message), detail_(std::move(detail)) {}
  const std::string& detail() const { return detail_; }

 private:
  std::string detail_;
};

class Executor {
 public:
  virtual ~Executor() = default;

  // Starts every worker and imports the app in each. Blocks until all are
  // ready. Throws StartupError.
  virtual void start() = 0;
  // The handler routes, identical in every worker. Valid once start() returned.
  virtual const std::vector<RouteInfo>& routes() const = 0;
  // Thread-safe; never blocks on Python. On anything but accepted the job is
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
  // Thread-safe, cheap: answered by the I/O threads for /readyz.
  virtual Readiness readiness() const = 0;
};

// Picks the strategy named in config.strategy. Starts no thread and no Python
// worker yet (start() does). Throws StartupError for a strategy this binary
// cannot run.
std::unique_ptr<Executor> make_executor(const ExecutorConfig& config);

// Strategies this binary can run, and the Python it embeds.
std::vector<std::string> available_strategies();
std::string embedded_python_version();
std::string embedded_python_build();

}  // namespace gilgamesh

// The one interface between the HTTP layer and Python. The HTTP layer hands a
// Job over as plain C++ data and gets plain C++ data back; every strategy
// (sub-interpreters, threads, free-threaded, processes) runs behind it, through
// the one WorkerPool (pyworkers/pool/worker_pool.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "server/model/body_stream.hpp"
#include "server/model/options.hpp"
#include "server/model/reactor.hpp"
#include "server/model/websocket_channel.hpp"

namespace gilgamesh {

using Clock = std::chrono::steady_clock;

// A setting in seconds (--graceful-timeout, say) as a Clock duration.
inline Clock::duration seconds_setting(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

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
  std::string scheme = "http";         // "https" when a trusted proxy says so (server/http/forwarded.hpp)
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
  // Set on the head of an answer that streams (body_stream.hpp): the body comes
  // from here, chunk by chunk, and `body` is empty.
  std::shared_ptr<BodyStream> stream;
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
  // Called at most once per job, from a worker-side thread, never with a Python
  // lock held. `token` is the one the job carried. A job past its deadline is
  // not completed: the owner answers 504 itself when the deadline passes (it is
  // the one writer of 504s).
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
  // Where an answer that streams goes (set by the pool for the job's run; not
  // owned). Null: every answer is collected whole.
  ResponseSink* sink = nullptr;
  // Set for a WebSocket upgrade request to an app that serves WebSockets (an
  // ASGI app): the answer is 101 (accepted; the socket then talks through this
  // channel) or an HTTP refusal. A worker that does not know it answers the
  // request as plain HTTP.
  std::shared_ptr<WebSocketChannel> websocket;

  // False when the owner is gone (nobody will send the answer).
  bool complete(HttpResponseData&& response) {
    auto o = owner.lock();
    if (o) o->job_done(token, std::move(response));
    return o != nullptr;
  }
  bool client_gone() const {
    auto o = owner.lock();
    return !o || o->client_gone();
  }
};

enum class SubmitResult { accepted, queue_full, stopping };

struct ExecutorInfo {
  Strategy strategy = Strategy::subinterpreters;
  int workers = 0;
  std::string python_version;
  PythonBuild build = PythonBuild::standard;
  bool gil_enabled = true;
  std::string strategy_reason;  // --strategy auto: why `strategy` was picked (else empty)
};

// A worker slot's state, named once (worker_state_name): /stats, /metrics and
// the dashboard all read these names.
enum class WorkerState { starting, idle, busy, recycling, interrupting, replacing, stopped };
inline constexpr WorkerState kWorkerStates[] = {WorkerState::starting,     WorkerState::idle,
                                                WorkerState::busy,         WorkerState::recycling,
                                                WorkerState::interrupting, WorkerState::replacing,
                                                WorkerState::stopped};
const char* worker_state_name(WorkerState s);

// One worker, as /stats shows it.
struct WorkerStats {
  int worker = 0;
  WorkerState state = WorkerState::starting;
  std::uint64_t requests = 0;
  std::uint64_t recycles = 0;
  std::uint64_t replacements = 0;
  long pid = 0;
  std::optional<std::int64_t> interpreter_id;
  int threads = 1;                             // lanes (--threads)
  int busy_threads = 0;                        // lanes running a job now
  int held = 0;                                // requests on the worker's event loop (ASGI)
  std::optional<double> busy_ms;               // how long the longest-running job has run
  std::optional<std::uint64_t> rss_bytes;      // a worker that is its own process
  std::optional<std::uint64_t> pss_bytes;

  bool busy() const { return busy_threads > 0 || held > 0; }
};

// The pool's live figures: /stats renders them as JSON, /metrics as gauges and
// counters, the dashboard reads the JSON.
struct PoolStats {
  std::size_t queue_depth = 0;
  std::size_t max_queue = 0;
  int busy_workers = 0;                        // workers with at least one busy thread
  int ready_workers = 0;
  int threads_per_worker = 1;
  int busy_threads = 0;
  int held = 0;                                // requests on the workers' event loops (ASGI)
  std::uint64_t replacements_total = 0;
  std::uint64_t interrupted_total = 0;
  std::uint64_t killed_total = 0;
  std::uint64_t abandoned_total = 0;
  int abandoned_live = 0;
  int draining_workers = 0;  // recycled workers still draining their event loop beside their replacement
  int max_abandoned = 0;
  std::uint64_t recycles_total = 0;
  std::uint64_t dropped_disconnected_total = 0;
  std::uint64_t expired_in_queue_total = 0;
  std::uint64_t interpreters_created = 0;
  std::uint64_t interpreters_ended = 0;
  std::uint64_t interpreters_left = 0;         // sub-interpreters left to the app's threads, never ended
  std::vector<long> worker_pids;               // workers that are processes of their own
  std::vector<WorkerStats> workers;
  std::optional<long> zygote_pid;              // processes
  std::optional<std::uint64_t> zygote_restarts_total;
};
void to_json(nlohmann::json& j, const PoolStats& s);

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
  enum class Kind {
    app,          // the app cannot be served (import, routes, a refused extension): the
                  // same in every worker, reported once as it is
    worker,       // one worker could not come up (an interpreter, a process)
    environment,  // this binary or machine cannot run the strategy at all
  };
  explicit StartupError(const std::string& message, std::string detail = {}, Kind kind = Kind::app)
      : std::runtime_error(message), detail_(std::move(detail)), kind_(kind) {}
  StartupError(Kind kind, const std::string& message) : StartupError(message, {}, kind) {}
  const std::string& detail() const { return detail_; }
  Kind kind() const { return kind_; }

 private:
  std::string detail_;
  Kind kind_;
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
  // Live figures for /stats and /metrics.
  virtual PoolStats stats() const = 0;
  // Thread-safe, cheap: answered by the I/O threads for /readyz.
  virtual Readiness readiness() const = 0;
  // The server's I/O threads, for workers that wait on a descriptor (a worker
  // process's socket) to have them watch it instead of a thread of their own.
  // Workers started after the call use it; null (the default, and after stop()):
  // they keep their own thread. It must outlive every worker started meanwhile.
  virtual void use_reactor(Reactor*) {}
};

// Picks config.pool.strategy. Starts no thread and no Python worker yet
// (start() does). Throws StartupError for a strategy this binary cannot run.
std::unique_ptr<Executor> make_executor(const ServerConfig& config);

// Strategies this binary can run, and the Python it embeds.
std::vector<Strategy> available_strategies();
std::string embedded_python_version();
PythonBuild embedded_python_build();

}  // namespace gilgamesh

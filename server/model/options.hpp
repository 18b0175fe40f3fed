// Every option an operator tunes, defined once: one struct per concern, each
// field with its default beside it. server/cli.cpp fills them from the command
// line (and GILGAMESH_* variables); the HTTP layer reads HttpOptions, the pool
// PoolOptions, the app loader AppOptions, and the zygote of the processes
// strategy gets the same structs as JSON. A new flag is one field here, one
// line in cli.cpp and one line in docs/operating.md.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/model/strategy.hpp"

namespace gilgamesh {

// The listener and its connections.
struct HttpOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  int listen_fd = -1;                          // --bind fd://N: an inherited listening socket
                                               // instead of host and port (not sent to the zygote)
  std::string uds;                             // --uds PATH, --bind unix:PATH: a UNIX socket
                                               // instead of host and port
  int io_threads = 0;                          // 0: 1 per 4 CPUs, at least 1
  int backlog = 0;                             // connections the kernel queues before accept
                                               // (0: SOMAXCONN, the kernel caps it at
                                               // net.core.somaxconn)
  static constexpr std::size_t kDefaultMaxHeader = 8 * 1024;
  std::size_t max_header = kDefaultMaxHeader;  // bytes of the request line and headers; past it 431
  std::size_t max_body = 1024 * 1024;          // bytes; larger request bodies get 413
  std::size_t max_connections = 0;             // open connections; past it new ones are closed
                                               // at once (0: 4096, less if the fd limit is lower)
  double header_timeout = 10.0;                // s from a request's first byte to its last header
  double keepalive_timeout = 5.0;              // s an idle keep-alive connection is kept
  double graceful_timeout = 30.0;              // s to finish in-flight requests on SIGTERM
  double request_timeout = 30.0;               // s from arrival to response, else 504 (and the
                                               // handler is interrupted, or its worker replaced)
  double shutdown_delay = 0.0;                 // s after SIGTERM with /readyz 503 before the
                                               // listener closes and the drain starts
  bool access_log = false;                     // one info line per request
  std::string access_log_format;               // --access-log-format: gunicorn's atoms (empty:
                                               // our own line); given, it turns the log on
  std::string forwarded_allow_ips = "127.0.0.1,::1";  // peers whose X-Forwarded-For/-Proto are
                                               // believed ("*": all; "": none)
  bool dashboard = true;                       // serve GET /dashboard and GET /events
  std::size_t ws_max_message = 1024 * 1024;    // bytes in one WebSocket message from a client,
                                               // fragments joined; larger: close 1009
  double ws_ping_interval = 20.0;              // s between the server's pings on a WebSocket
                                               // (0: no pings)
  double ws_ping_timeout = 20.0;               // s a ping may wait for its pong before the
                                               // peer is dropped
  bool ws_per_message_deflate = true;          // accept a client's permessage-deflate offer
                                               // (RFC 7692), as uvicorn does
  std::vector<std::string> static_mounts;      // directories the server serves itself
                                               // (server/http/static_files.hpp)
  std::vector<std::string> static_routes;      // the path each is served at, in order (none:
                                               // /static for a single mount)
  long long static_expires = 86400;            // s in Cache-Control's max-age (0: no-cache)
  std::string static_dir_to_file;              // a directory's index file (none: 404)
  bool server_header = true;                   // Server: gilgamesh/VERSION on every answer
  std::vector<std::string> headers;            // --header NAME:VALUE, on every answer unless it
                                               // sets its own (parse_default_header)
};

// The workers: how many, on which strategy, and how they are replaced.
struct PoolOptions {
  Strategy strategy = Strategy::subinterpreters;
  std::string strategy_reason;                 // --strategy auto: why this one was picked
  PythonBuild python_build = PythonBuild::standard;  // the CPython build that runs the workers
  int workers = 0;                             // 0: number of CPUs
  int threads = 1;                             // requests a worker serves at once, each on a
                                               // thread of its own (gunicorn's --threads)
  int worker_spin_us = -1;                     // µs an idle worker watches the queue before it
                                               // sleeps; -1: 50 when workers + I/O threads
                                               // <= CPUs, else 0
  std::size_t max_queue = 1024;                // queued jobs before 503
  int max_abandoned = 0;                       // stuck handler threads left running before the
                                               // pool stops replacing them (0: 2 x workers)
  unsigned max_requests = 0;                   // recycle a worker after N requests (0: never)
  unsigned max_requests_jitter = 0;            // + random 0..J per recycle
  bool allow_gil = false;                      // free-threaded: run even if the GIL came back
  bool preload = false;                        // import the app in the main interpreter before
                                               // the workers start (gunicorn's --preload)
  int worker_connections = 1000;               // ASGI: requests a worker's event loop holds at
                                               // once; past it they wait in the queue (gunicorn's
                                               // --worker-connections, uvicorn's --limit-concurrency)

  std::chrono::microseconds worker_spin() const { return std::chrono::microseconds(worker_spin_us > 0 ? worker_spin_us : 0); }
  int abandoned_limit() const { return max_abandoned > 0 ? max_abandoned : 2 * workers; }
};

// What to serve, and how its answers are bounded.
enum class AppKind { routes, wsgi, asgi };
// ASGI lifespan: auto runs it when the app supports it; on requires it; off skips it.
enum class Lifespan { automatic, on, off };
// The event loop of an ASGI app's worker processes (`processes`): auto is uvloop where
// it can be imported, else asyncio's. In-process loops are asyncio's (they pull).
enum class EventLoop { automatic, asyncio, uvloop };
struct AppOptions {
  std::string target = "handlers.demo";        // routes: the module of @gilgamesh.route handlers;
                                               // wsgi, asgi: MODULE:CALLABLE
  AppKind kind = AppKind::routes;
  Lifespan lifespan = Lifespan::automatic;     // asgi
  EventLoop loop = EventLoop::automatic;       // asgi, processes (the zygote settles auto)
  std::string root_path;                       // the URL prefix the app is mounted at (WSGI
                                               // SCRIPT_NAME, ASGI root_path)
  std::size_t max_response = std::size_t{64} << 20;  // bytes; larger response bodies become 500
  std::vector<std::string> pythonpath;         // prepended to sys.path (the working dir follows)
  bool debug = false;                          // error bodies carry the exception and traceback
};

// Development: restart the server when the app's Python files change (uvicorn's --reload).
// Only the supervisor reads these (server/reload.cpp); they do not travel to the zygote.
struct ReloadOptions {
  bool enabled = false;
  std::vector<std::string> dirs;               // watched for *.py changes (default: the working
                                               // directory)
  std::vector<std::string> includes;           // --reload-include: more file patterns than *.py
  std::vector<std::string> excludes;           // --reload-exclude: patterns left out
};

struct ServerConfig {
  HttpOptions http;
  PoolOptions pool;
  AppOptions app;
  ReloadOptions reload;
  std::string log_level = "info";              // trace | debug | info | warn | error | critical | off
};

// As JSON (the zygote's options, the probe's cache key): the names of the command line.
NLOHMANN_JSON_SERIALIZE_ENUM(Strategy, {{Strategy::subinterpreters, "subinterpreters"},
                                        {Strategy::threads, "threads"},
                                        {Strategy::free_threaded, "free-threaded"},
                                        {Strategy::processes, "processes"},
                                        {Strategy::automatic, "auto"}})
NLOHMANN_JSON_SERIALIZE_ENUM(PythonBuild, {{PythonBuild::standard, "default"},
                                           {PythonBuild::free_threaded, "free-threaded"}})
NLOHMANN_JSON_SERIALIZE_ENUM(AppKind, {{AppKind::routes, "routes"}, {AppKind::wsgi, "wsgi"},
                                       {AppKind::asgi, "asgi"}})
NLOHMANN_JSON_SERIALIZE_ENUM(Lifespan, {{Lifespan::automatic, "auto"}, {Lifespan::on, "on"},
                                        {Lifespan::off, "off"}})
NLOHMANN_JSON_SERIALIZE_ENUM(EventLoop, {{EventLoop::automatic, "auto"}, {EventLoop::asyncio, "asyncio"},
                                         {EventLoop::uvloop, "uvloop"}})

// For the processes strategy's zygote, started by executing the binary again:
// the options travel as JSON on its command line. Every field, by its name.
void to_json(nlohmann::json& j, const ServerConfig& c);
void from_json(const nlohmann::json& j, ServerConfig& c);

// All of `text` as a decimal integer; nothing if it is empty, has anything after the digits or
// does not fit. (A port, a descriptor number, a flag's value.)
std::optional<long long> whole_integer(std::string_view text);

}  // namespace gilgamesh

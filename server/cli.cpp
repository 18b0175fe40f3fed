#include "server/cli.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <limits>
#include <cmath>
#include <initializer_list>
#include <iostream>
#include <optional>
#include <string_view>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "server/http/cpu_limit.hpp"
#include "server/http/forwarded.hpp"
#include "server/http/static_files.hpp"
#include "server/model/response.hpp"
#include "server/observation/access_log.hpp"

namespace gilgamesh {

namespace {

std::string shown(const std::string& s) { return "'" + s.substr(0, 60) + (s.size() > 60 ? "...'" : "'"); }

// A value check that says what is allowed ("--port: must be an integer in
// 0..65535, got '99999'"), run before CLI11 converts the text.
CLI::Validator integer_in(long long lo, long long hi) {
  const std::string range = std::to_string(lo) + ".." + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        const auto v = whole_integer(text);
        if (!v || *v < lo || *v > hi) {
          return "must be an integer in " + range + ", got " + shown(text);
        }
        return {};
      },
      "INT in " + range);
}

CLI::Validator seconds_in(double lo, double hi) {
  auto fmt = [](double x) {
    std::string s = std::to_string(x);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  };
  const std::string range = fmt(lo) + ".." + fmt(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        std::size_t used = 0;
        double v = 0;
        try {
          v = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (text.empty() || used != text.size() || !std::isfinite(v) || v < lo || v > hi) {
          return "must be a number of seconds in " + range + ", got " + shown(text);
        }
        return {};
      },
      "SECONDS in " + range);
}

CLI::Validator one_of(std::vector<std::string> names) {
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return CLI::Validator(
      [names, list](std::string& text) -> std::string {
        for (const auto& n : names) {
          if (text == n) return {};
        }
        return "must be one of " + list + "; got " + shown(text);
      },
      "one of " + list);
}

// The flags that are not fields of the option structs: converted after parsing.
struct RawFlags {
  bool version = false;
  bool no_dashboard = false;
  bool no_server_header = false;
  std::string wsgi;
  std::string asgi;
  std::string lifespan = "auto";
  std::string loop = "auto";
  std::string strategy;
  std::string python_build;
  std::string bind;
};

void add_app_options(CLI::App& cli, AppOptions& app, RawFlags& raw) {
  cli.add_option("--app", app.target, "Python module whose @gilgamesh.route handlers to serve")
      ->capture_default_str();
  cli.add_option("--wsgi", raw.wsgi,
                 "PEP 3333 application to serve instead, as MODULE:CALLABLE (CALLABLE defaults to "
                 "'application'; 'factory()' calls a factory)");
  cli.add_option("--asgi", raw.asgi,
                 "ASGI 3 application to serve instead, as MODULE:APP ('factory()' calls a factory); "
                 "each worker runs it on an asyncio event loop of its own");
  cli.add_option("--lifespan", raw.lifespan,
                 "ASGI lifespan events: auto (run them if the app supports them), on (the app must), off")
      ->check(one_of({"auto", "on", "off"}))
      ->capture_default_str();
  cli.add_option("--loop", raw.loop,
                 "The event loop of an ASGI app's worker processes (--strategy processes): uvloop (the "
                 "package must be importable by the app), asyncio, or auto: uvloop where it can be "
                 "imported, else asyncio, as uvicorn's. The in-process strategies run asyncio's loop")
      ->check(one_of({"auto", "asyncio", "uvloop"}))
      ->capture_default_str();
  cli.add_option("--root-path", app.root_path,
                 "The URL prefix the app is mounted at: WSGI's SCRIPT_NAME (stripped from PATH_INFO "
                 "when the path starts with it), ASGI's root_path");
  cli.add_option("--max-response", app.max_response,
                 "Largest response body in bytes; a handler or app that makes a larger one gets 500")
      ->check(integer_in(1, 1LL << 34))
      ->capture_default_str();
  cli.add_option("--pythonpath", app.pythonpath,
                 "Directory to prepend to sys.path (repeatable; the working directory follows)");
  cli.add_flag("--debug", app.debug,
               "Error bodies of a handler's unexpected exception carry its type, text and traceback "
               "(for development: without it they say only 'internal server error')");
}

void add_pool_options(CLI::App& cli, PoolOptions& pool, RawFlags& raw) {
  raw.strategy = strategy_name(pool.strategy);
  cli.add_option("--strategy", raw.strategy,
                 "How Python runs the handlers (auto: the best one that can load the app, as "
                 "`gilgamesh check` finds)")
      ->check(one_of(strategy_names()))
      ->capture_default_str();
  cli.add_option("--python-build", raw.python_build,
                 "CPython build to embed: default or free-threaded (default: free-threaded for "
                 "--strategy free-threaded, else default)")
      ->check(one_of({"default", "free-threaded"}));
  cli.add_option("-w,--workers", pool.workers,
                 "Worker count (default: the CPUs this process may use: affinity, cgroup CPU quota)")
      ->check(integer_in(1, 1024));
  cli.add_option("--threads", pool.threads,
                 "Requests each worker serves at once, each on a thread of its own: for handlers that "
                 "wait (a database, another service), as gunicorn's --threads")
      ->check(integer_in(1, 256))
      ->capture_default_str();
  cli.add_option("--worker-connections", pool.worker_connections,
                 "ASGI: requests each worker's event loop holds at once; past it they wait in the "
                 "queue, then get 503 (gunicorn's --worker-connections, uvicorn's --limit-concurrency)")
      ->check(integer_in(1, 1000000))
      ->capture_default_str();
  cli.add_option("--worker-spin", pool.worker_spin_us,
                 "Microseconds an idle worker keeps watching the queue before it sleeps: saves a "
                 "wake-up per request when requests come close together, costs CPU while idle "
                 "(default: 50 when workers + I/O threads <= CPUs, else 0)")
      ->check(integer_in(0, 10000));
  cli.add_option("--max-queue", pool.max_queue, "Requests queued for workers before 503")
      ->check(integer_in(1, 1LL << 24))
      ->capture_default_str();
  cli.add_option("--max-abandoned", pool.max_abandoned,
                 "Handler threads stuck past --timeout that may be left running while a fresh "
                 "worker takes their slot; past it the slot is not replaced and /readyz says 503 "
                 "(in-process strategies; default: 2 x workers)")
      ->check(integer_in(1, 100000));
  cli.add_option("--max-requests", pool.max_requests,
                 "Recycle a worker after this many requests (0: never)")
      ->check(integer_in(0, 4294967295LL))
      ->capture_default_str();
  cli.add_option("--max-requests-jitter", pool.max_requests_jitter,
                 "Add 0..J random requests to --max-requests per worker")
      ->check(integer_in(0, 4294967295LL))
      ->capture_default_str();
  cli.add_flag("--allow-gil", pool.allow_gil,
               "free-threaded: serve even if an extension turned the GIL back on");
  cli.add_flag("--preload", pool.preload,
               "Import the app once in the main interpreter before the workers start (subinterpreters: "
               "single-phase C extensions then initialize there, and sub-interpreters get a clean "
               "ImportError or the package's pure-Python fallback; processes and threads always do)");
}

void add_http_options(CLI::App& cli, HttpOptions& h, RawFlags& raw) {
  cli.add_option("-b,--bind", raw.bind,
                 "Where to listen, as gunicorn's --bind: HOST:PORT, [IPv6]:PORT, HOST (port 8080), or "
                 "unix:PATH, a UNIX socket, or fd://N, a listening socket this process inherited "
                 "(systemd's socket activation); instead of --host and --port");
  cli.add_option("--uds", h.uds,
                 "Listen on a UNIX socket at this path instead of --host and --port, as uvicorn's "
                 "--uds (a stale socket file is replaced; the socket is made connectable by every "
                 "user, 0666: restrict access with its folder's permissions)");
  cli.add_option("--host", h.host, "Address to listen on")->capture_default_str();
  cli.add_option("--port", h.port, "TCP port to listen on (0: any free port)")
      ->check(integer_in(0, 65535))
      ->capture_default_str();
  cli.add_option("--backlog", h.backlog,
                 "Connections the kernel queues for the server before it accepts them, as gunicorn's and "
                 "uvicorn's --backlog (default: SOMAXCONN; the kernel caps it at net.core.somaxconn)")
      ->check(integer_in(1, 65535));
  cli.add_option("--io-threads", h.io_threads, "HTTP I/O threads (default: 1 per 4 CPUs, at least 1)")
      ->check(integer_in(1, 256));
  cli.add_option("--max-header-size", h.max_header,
                 "Largest request head (request line and headers) in bytes (larger: 431; gunicorn's "
                 "--limit-request-field_size, Node's --max-http-header-size): raise it for large cookies "
                 "or tokens; each connection may hold this much while its head arrives")
      ->check(integer_in(1024, 1024 * 1024))
      ->capture_default_str();
  cli.add_option("--max-body", h.max_body, "Largest request body in bytes (larger: 413)")
      ->check(integer_in(0, 1LL << 34))
      ->capture_default_str();
  cli.add_option("--max-connections", h.max_connections,
                 "Open connections; past it new ones are closed at once and counted (default: " +
                     std::to_string(kDefaultMaxConnections) + ", less if the file descriptor limit is lower)")
      ->check(integer_in(1, 10000000));
  cli.add_option("--ws-max-message", h.ws_max_message,
                 "Largest WebSocket message a client may send, in bytes, fragments joined (larger: "
                 "close 1009)")
      ->check(integer_in(1, 1LL << 31))
      ->capture_default_str();
  cli.add_option("--ws-ping-interval", h.ws_ping_interval,
                 "Seconds between the server's pings on each open WebSocket (0: no pings)")
      ->check(seconds_in(0.0, 86400.0))
      ->capture_default_str();
  cli.add_option("--ws-ping-timeout", h.ws_ping_timeout,
                 "Seconds a WebSocket peer has to answer a ping before it is dropped (0: never dropped)")
      ->check(seconds_in(0.0, 86400.0))
      ->capture_default_str();
  cli.add_option("--ws-per-message-deflate", h.ws_per_message_deflate,
                 "Compress WebSocket messages (permessage-deflate, RFC 7692) with a client that offers "
                 "it, as uvicorn's flag: true or false")
      ->default_str("true");
  cli.add_option("--static-path-mount", h.static_mounts,
                 "Directory whose files the server answers itself at --static-path-route, without Python, "
                 "as Granian's (repeatable): a Django app's STATIC_ROOT, a front end's build")
      ->check(CLI::ExistingDirectory);
  cli.add_option("--static-path-route", h.static_routes,
                 "Path a --static-path-mount is served at, paired with them in order (repeatable; default: "
                 "/static for a single mount); the app gets every other path")
      ->type_name("PATH");
  cli.add_option("--static-path-expires", h.static_expires,
                 "Seconds a client may keep a static file before asking again (Cache-Control: max-age; "
                 "0: no-cache, asked with its ETag each time)")
      ->check(CLI::Range(0LL, 315360000LL))
      ->capture_default_str();
  cli.add_option("--static-path-dir-to-file", h.static_dir_to_file,
                 "File answered for a directory under a static mount, as index.html (default: a directory "
                 "is 404)")
      ->type_name("NAME");
  cli.add_option("--header-timeout", h.header_timeout,
                 "Seconds a client has to send the request headers")
      ->check(seconds_in(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--keepalive-timeout", h.keepalive_timeout,
                 "Seconds an idle keep-alive connection stays open")
      ->check(seconds_in(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--graceful-timeout", h.graceful_timeout,
                 "Seconds to finish in-flight requests after SIGTERM/SIGINT")
      ->check(seconds_in(0.0, 86400.0))
      ->capture_default_str();
  cli.add_option("--timeout", h.request_timeout,
                 "Seconds from a request's arrival to its response, else 504; a handler still "
                 "running then is interrupted (its worker replaced if it does not stop)")
      ->check(seconds_in(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--shutdown-delay", h.shutdown_delay,
                 "Seconds after SIGTERM during which /readyz answers 503 and the listener still "
                 "accepts, before the drain starts (let a load balancer take the replica out first)")
      ->check(seconds_in(0.0, 3600.0))
      ->capture_default_str();
  cli.add_option("--forwarded-allow-ips", h.forwarded_allow_ips,
                 "Peers (addresses and networks, comma-separated; '*': every peer; '': none) whose "
                 "X-Forwarded-For and X-Forwarded-Proto give the app the client's address and scheme, "
                 "as behind nginx")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            try {
              forwarded::TrustedProxies::parse(text);
              return {};
            } catch (const std::invalid_argument& e) {
              return e.what();
            }
          },
          "ADDRESSES"))
      ->capture_default_str();
  cli.add_flag("--access-log", h.access_log, "Log one line per request");
  cli.add_option("--access-log-format", h.access_log_format,
                 "The access log's line in gunicorn's --access-logformat atoms, e.g. the Apache combined "
                 "format '%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\"' (turns "
                 "--access-log on; see docs/operating.md)")
      ->check([](const std::string& format) {
        try {
          AccessLogFormat{format};
          return std::string();
        } catch (const std::invalid_argument& e) {
          return std::string(e.what());
        }
      });
  cli.add_flag("--no-dashboard", raw.no_dashboard,
               "Do not serve the live dashboard (GET /dashboard) and its event stream (GET /events)");
  cli.add_flag("--no-server-header", raw.no_server_header,
               "Leave the Server field (gilgamesh/VERSION) out of every answer, as uvicorn's flag (an app's "
               "own Server field is still sent)");
  cli.add_option("--header", h.headers,
                 "A field every answer carries unless it sets its own of that name, as NAME:VALUE, as "
                 "uvicorn's --header (repeatable: --header X-Frame-Options:DENY)")
      ->type_name("NAME:VALUE")
      ->check([](const std::string& text) {
        std::string error;
        return parse_default_header(text, error) ? std::string() : error;
      });
}

// Every flag can also be set from the environment, as containers and process
// managers do: GILGAMESH_<FLAG> (--max-queue: GILGAMESH_MAX_QUEUE). The command line wins.
void add_environment_names(CLI::App& cli) {
  for (CLI::Option* opt : cli.get_options()) {
    const auto& names = opt->get_lnames();
    if (names.empty() || names.front() == "help" || names.front() == "version") continue;
    std::string env = "GILGAMESH_";
    for (char ch : names.front()) env += ch == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    opt->envname(env);
  }
}

// Parses argv into what `cli` is bound to; on --help or a bad flag, prints
// and returns the exit code.
std::optional<int> parse_flags(CLI::App& cli, int argc, char** argv) {
  try {
    cli.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << cli.help();
    return 0;
  } catch (const CLI::ArgumentMismatch& e) {
    // "--workers: 1 required INT in 1..1024 missing", or "--workers: At Most 1 required
    // but received 2" (given twice): say it plainly.
    const std::string what = e.what();
    const std::string name = what.substr(0, what.find(':'));
    if (what.find("At Most") != std::string::npos) {
      std::cerr << "gilgamesh: " << name << " is given more than once; give it once (see --help)\n";
    } else {
      std::cerr << "gilgamesh: " << name << " needs a value (see --help)\n";
    }
    return 2;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    for (char& ch : what) {
      if (ch == '\n') ch = ' ';
    }
    std::cerr << "gilgamesh: " << what << " (see --help)\n";
    return 2;
  }
  return std::nullopt;
}

// The 0 (and -1) defaults that depend on the CPUs this process may use.
void resolve_defaults(ServerConfig& c) {
  const int cpus = usable_cpus();
  if (c.pool.workers == 0) c.pool.workers = cpus;
  if (c.http.io_threads == 0) c.http.io_threads = std::max(1, cpus / 4);
  // Spinning helps only on a core nobody else wants; on a full machine it steals the I/O thread's.
  if (c.pool.worker_spin_us < 0) c.pool.worker_spin_us = c.pool.workers + c.http.io_threads <= cpus ? 50 : 0;
}

// --strategy and --python-build; false (after saying why) if they do not go together.
bool resolve_strategy(PoolOptions& pool, const RawFlags& raw) {
  pool.strategy = *parse_strategy(raw.strategy);
  const bool free_threaded = pool.strategy == Strategy::free_threaded;
  pool.python_build = raw.python_build.empty()
                          ? (free_threaded ? PythonBuild::free_threaded : PythonBuild::standard)
                          : *parse_python_build(raw.python_build);
  if (free_threaded && pool.python_build != PythonBuild::free_threaded) {
    std::cerr << "gilgamesh: --strategy free-threaded needs --python-build free-threaded (see --help)\n";
    return false;
  }
  return true;
}

// Whether argv spells one of `names` (as "--bind X", "--bind=X", or "-bX" for a short name),
// rather than its GILGAMESH_ variable setting it.
bool on_command_line(int argc, char** argv, std::initializer_list<std::string_view> names) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;
    for (std::string_view name : names) {
      const bool short_name = name.size() == 2;
      if (arg == name || (arg.starts_with(name) && (short_name || arg[name.size()] == '='))) return true;
    }
  }
  return false;
}

// Where to listen: --uds, -b/--bind (into --host and --port, a UNIX socket's path or an
// inherited socket's number), or --host and --port. The command line wins over the
// environment (the container image sets GILGAMESH_HOST and GILGAMESH_PORT: `-b` or `--uds` on
// `docker run`'s command line must not clash with them); two ways on the command line, or
// --uds and --bind both from the environment, are refused. False (after saying why) if they are
// not usable.
bool resolve_bind(HttpOptions& http, const RawFlags& raw, const CLI::App& cli, int argc, char** argv) {
  const bool uds_cli = on_command_line(argc, argv, {"--uds"});
  const bool bind_cli = on_command_line(argc, argv, {"-b", "--bind"});
  const bool host_cli = on_command_line(argc, argv, {"--host", "--port"});
  const bool command_line = uds_cli || bind_cli || host_cli;  // then what the environment says is not read
  const bool uds = command_line ? uds_cli : cli.count("--uds") > 0;
  const bool bind = command_line ? bind_cli : cli.count("--bind") > 0;
  const bool host_port = host_cli;  // from the environment, --host and --port yield to the others
  if (!uds) http.uds.clear();
  const char* clash = uds && bind ? "--uds and --bind" : uds && host_port ? "--uds and --host/--port"
                                                       : bind && host_port ? "--bind and --host/--port" : nullptr;
  if (clash != nullptr) {
    std::cerr << "gilgamesh: " << clash << " are exclusive: give one place to listen (see --help)\n";
    return false;
  }
  if (uds) {
    if (!http.uds.empty()) return true;
    std::cerr << "gilgamesh: --uds takes the socket's path (see --help)\n";
    return false;
  }
  if (!bind) return true;
  const std::string& bind_text = raw.bind;
  auto refuse = [&](const std::string& why) {
    std::cerr << "gilgamesh: --bind " << bind_text << ": " << why << " (see --help)\n";
    return false;
  };
  if (bind_text.starts_with("unix:")) {
    if (bind_text.size() == 5) return refuse("unix: takes the socket's path, as unix:/run/app.sock");
    http.uds = bind_text.substr(5);
    return true;
  }
  auto port_of = [](std::string_view text, int& port) {
    const auto n = whole_integer(text);
    if (!n || *n < 0 || *n > 65535) return false;
    port = static_cast<int>(*n);
    return true;
  };
  if (bind_text.starts_with("fd://")) {
    const auto fd = whole_integer(std::string_view(bind_text).substr(5));
    if (!fd || *fd < 0 || *fd > std::numeric_limits<int>::max()) return refuse("fd:// takes a file descriptor number");
    http.listen_fd = static_cast<int>(*fd);
    return true;
  }
  std::string host = bind_text;
  int port = HttpOptions{}.port;  // HOST alone: 8080, whatever GILGAMESH_PORT says
  if (bind_text.starts_with('[')) {  // [IPv6] or [IPv6]:PORT
    const auto close = bind_text.find(']');
    if (close == std::string::npos) return refuse("an IPv6 address in brackets lacks its ']'");
    host = bind_text.substr(1, close - 1);
    const std::string rest = bind_text.substr(close + 1);
    if (!rest.empty() && (rest[0] != ':' || !port_of(std::string_view(rest).substr(1), port))) {
      return refuse("expected [IPv6]:PORT with PORT in 0..65535");
    }
  } else if (const auto colon = bind_text.rfind(':'); colon != std::string::npos) {
    if (bind_text.find(':') != colon) return refuse("an IPv6 address goes in brackets: [::1]:8080");
    host = bind_text.substr(0, colon);
    if (!port_of(std::string_view(bind_text).substr(colon + 1), port)) return refuse("PORT must be in 0..65535");
  }
  if (host.empty()) return refuse("HOST is missing (0.0.0.0 for every IPv4 interface)");
  http.host = host;
  http.port = static_cast<std::uint16_t>(port);
  return true;
}

// --app, --wsgi or --asgi, and --root-path; false (after saying why) if they are not usable.
bool validate_app(AppOptions& app, const RawFlags& raw, const CLI::App& cli) {
  const bool wsgi_given = cli.count("--wsgi") > 0;
  const bool asgi_given = cli.count("--asgi") > 0;
  const int kinds = (cli.count("--app") > 0) + wsgi_given + asgi_given;
  if (kinds > 1) {
    std::cerr << "gilgamesh: --app, --wsgi and --asgi are exclusive (given: "
              << (cli.count("--app") > 0 ? "--app " : "") << (wsgi_given ? "--wsgi " : "")
              << (asgi_given ? "--asgi" : "")
              << "): --app serves @gilgamesh.route handlers, --wsgi a WSGI callable, --asgi an ASGI "
                 "app (see --help)\n";
    return false;
  }
  if (wsgi_given || asgi_given) {
    const std::string& given = wsgi_given ? raw.wsgi : raw.asgi;
    const char* flag = wsgi_given ? "--wsgi" : "--asgi";
    const auto colon = given.find(':');
    if (given.empty() || colon == 0 || colon + 1 == given.size() || (asgi_given && colon == std::string::npos)) {
      std::cerr << "gilgamesh: " << flag << " takes " << (wsgi_given ? "MODULE:CALLABLE" : "MODULE:APP")
                << ", got '" << given << "' (see --help)\n";
      return false;
    }
    app.target = colon == std::string::npos ? given + ":application" : given;
    app.kind = wsgi_given ? AppKind::wsgi : AppKind::asgi;
  } else if (app.target.find(':') != std::string::npos) {
    std::cerr << "gilgamesh: --app takes a module of @gilgamesh.route handlers; for the WSGI "
                 "callable '" << app.target << "' use --wsgi " << app.target << " (an ASGI app: --asgi)\n";
    return false;
  }
  app.lifespan = raw.lifespan == "on" ? Lifespan::on : raw.lifespan == "off" ? Lifespan::off : Lifespan::automatic;
  app.loop = raw.loop == "uvloop" ? EventLoop::uvloop : raw.loop == "asyncio" ? EventLoop::asyncio : EventLoop::automatic;
  if (app.loop == EventLoop::uvloop && app.kind != AppKind::asgi) {
    std::cerr << "gilgamesh: --loop uvloop is for ASGI apps (--asgi); route handlers and WSGI apps run "
                 "no event loop of their own under --strategy processes (see --help)\n";
    return false;
  }
  if (app.target.empty()) {
    std::cerr << "gilgamesh: --app must name a Python module (see --help)\n";
    return false;
  }
  if (!normalize_root_path(app.root_path)) {
    std::cerr << "gilgamesh: --root-path must start with '/', e.g. /api (see --help)\n";
    return false;
  }
  return true;
}

}  // namespace

bool normalize_root_path(std::string& root_path) {
  if (root_path.empty()) return true;
  if (root_path.front() != '/') return false;
  while (!root_path.empty() && root_path.back() == '/') root_path.pop_back();
  return true;
}

std::string uvloop_needs_processes(Strategy strategy, bool by_auto) {
  return std::string("--loop uvloop runs in worker processes (--strategy processes), but ") +
         (by_auto ? "--strategy auto chose " : "--strategy ") + std::string(strategy_name(strategy)) +
         ", which runs each worker's event loop in the server's own process on asyncio's loop (it takes "
         "its requests from the pool's queue itself): add --strategy processes, or leave --loop out";
}

std::size_t default_max_connections(std::size_t fd_limit, int workers) {
  // Descriptors the rest of the server may hold: the listener, logs, the
  // workers' sockets and pipes, what the app itself opens.
  const std::size_t reserve = 128 + 8 * static_cast<std::size_t>(std::max(workers, 1));
  if (fd_limit <= reserve + 32) return std::max<std::size_t>(16, fd_limit / 2);
  return std::min(kDefaultMaxConnections, fd_limit - reserve);
}

ParseOutcome parse_command_line(int argc, char** argv) {
  ServerConfig c;
  RawFlags raw;
  CLI::App cli{"gilgamesh: an HTTP server that runs Python request handlers on every core.", "gilgamesh"};
  cli.set_help_flag("-h,--help", "Print this help and exit");
  cli.add_flag("--version", raw.version, "Print the gilgamesh and embedded Python versions and exit");
  add_app_options(cli, c.app, raw);
  add_pool_options(cli, c.pool, raw);
  add_http_options(cli, c.http, raw);
  cli.add_flag("--reload", c.reload.enabled,
               "Development: restart the server when a *.py file under --reload-dir changes (the "
               "listening socket stays open meanwhile), as uvicorn's --reload");
  cli.add_option("--reload-dir", c.reload.dirs,
                 "Directory whose *.py files --reload watches, subdirectories included (repeatable; "
                 "default: the working directory)")
      ->check(CLI::ExistingDirectory);
  cli.add_option("--reload-include", c.reload.includes,
                 "Glob pattern of more files --reload watches besides *.py, on a file's name or, with a "
                 "'/', its path under --reload-dir, as uvicorn's (repeatable; '*.html', 'templates/*')");
  cli.add_option("--reload-exclude", c.reload.excludes,
                 "Glob pattern of files or folders --reload leaves out (repeatable; default: .* *.py[cod] "
                 ".sw.* ~*, as uvicorn's)");
  cli.add_option("--log-level", c.log_level, "Log level ('warning' as gunicorn and uvicorn spell it: warn)")
      ->check(one_of({"trace", "debug", "info", "warn", "warning", "error", "critical", "off"}))
      ->capture_default_str();
  add_environment_names(cli);

  if (const auto exit_code = parse_flags(cli, argc, argv)) return {std::nullopt, *exit_code, false};
  if (raw.version) return {std::nullopt, 0, true};
  c.http.dashboard = !raw.no_dashboard;
  c.http.server_header = !raw.no_server_header;
  if (!c.http.access_log_format.empty()) c.http.access_log = true;
  resolve_defaults(c);
  if (!resolve_bind(c.http, raw, cli, argc, argv) || !resolve_strategy(c.pool, raw) || !validate_app(c.app, raw, cli)) {
    return {std::nullopt, 2, false};
  }
  try {
    StaticFiles checked(c.http.static_routes, c.http.static_mounts, c.http.static_expires, c.http.static_dir_to_file);
  } catch (const std::invalid_argument& e) {
    std::cerr << "gilgamesh: " << e.what() << " (see --help)\n";
    return {std::nullopt, 2, false};
  }
  if ((!c.reload.dirs.empty() || !c.reload.includes.empty() || !c.reload.excludes.empty()) && !c.reload.enabled) {
    std::cerr << "gilgamesh: --reload-dir, --reload-include and --reload-exclude say what --reload watches; add "
                 "--reload (see --help)\n";
    return {std::nullopt, 2, false};
  }
  if (c.app.loop == EventLoop::uvloop && c.pool.strategy != Strategy::processes &&
      c.pool.strategy != Strategy::automatic) {
    std::cerr << "gilgamesh: " << uvloop_needs_processes(c.pool.strategy, false) << "\n";
    return {std::nullopt, 2, false};
  }
  if (c.app.kind == AppKind::asgi && c.pool.threads > 1) {
    std::cerr << "gilgamesh: --threads is for WSGI apps and route handlers; an ASGI worker serves "
                 "--worker-connections requests at once on its event loop (see --help)\n";
    return {std::nullopt, 2, false};
  }
  return {c, 0, false};
}

}  // namespace gilgamesh

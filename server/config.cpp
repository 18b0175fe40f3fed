#include "config.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <iostream>

#include "cpu_limit.hpp"

namespace gilgamesh {

namespace {

std::string shown(const std::string& s) { return "'" + s.substr(0, 60) + (s.size() > 60 ? "...'" : "'"); }

// A value check that says what is allowed ("--port: must be an integer in
// 0..65535, got '99999'"), run before CLI11 converts the text.
CLI::Validator integer_in(long long lo, long long hi) {
  const std::string range = std::to_string(lo) + ".." + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        long long v = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, v);
        if (text.empty() || ec != std::errc() || ptr != end || v < lo || v > hi) {
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

}  // namespace

std::size_t default_max_connections(std::size_t fd_limit, int workers) {
  // Descriptors the rest of the server may hold: the listener, logs, the
  // workers' sockets and pipes, what the app itself opens.
  const std::size_t reserve = 128 + 8 * static_cast<std::size_t>(std::max(workers, 1));
  if (fd_limit <= reserve + 32) return std::max<std::size_t>(16, fd_limit / 2);
  return std::min(kDefaultMaxConnections, fd_limit - reserve);
}

ParseOutcome parse_command_line(int argc, char** argv) {
  ServerConfig c;
  bool version = false;
  bool no_dashboard = false;
  CLI::App cli{"gilgamesh: an HTTP server that runs Python request handlers on every core.",
               "gilgamesh"};
  cli.set_help_flag("-h,--help", "Print this help and exit");
  cli.add_flag("--version", version, "Print the gilgamesh and embedded Python versions and exit");
  std::string wsgi;
  auto* app_option = cli.add_option("--app", c.app, "Python module whose @gilgamesh.route handlers to serve")
                         ->capture_default_str();
  auto* wsgi_option = cli.add_option(
      "--wsgi", wsgi,
      "PEP 3333 application to serve instead, as MODULE:CALLABLE (CALLABLE defaults to "
      "'application'; 'factory()' calls a factory)");
  cli.add_option("--root-path", c.root_path,
                 "WSGI: the URL prefix the app is mounted at (its SCRIPT_NAME; stripped from "
                 "PATH_INFO when the path starts with it)");
  cli.add_option("--max-response", c.max_response,
                 "Largest response body in bytes; a handler or app that makes a larger one gets 500")
      ->check(integer_in(1, 1LL << 34))
      ->capture_default_str();
  cli.add_option("--pythonpath", c.pythonpath,
                 "Directory to prepend to sys.path (repeatable; the working directory follows)");
  cli.add_option("--strategy", c.strategy,
                 "How Python runs the handlers (auto: the best one that can load the app, as "
                 "`gilgamesh check` finds)")
      ->check(one_of({"subinterpreters", "threads", "free-threaded", "processes", "auto"}))
      ->capture_default_str();
  cli.add_option("--python-build", c.python_build,
                 "CPython build to embed: default or free-threaded (default: free-threaded for "
                 "--strategy free-threaded, else default)")
      ->check(one_of({"default", "free-threaded"}));
  cli.add_option("--workers", c.workers,
                 "Worker count (default: the CPUs this process may use: affinity, cgroup CPU quota)")
      ->check(integer_in(1, 1024));
  cli.add_option("--host", c.host, "Address to listen on")->capture_default_str();
  cli.add_option("--port", c.port, "TCP port to listen on (0: any free port)")
      ->check(integer_in(0, 65535))
      ->capture_default_str();
  cli.add_option("--io-threads", c.io_threads, "HTTP I/O threads (default: 1 per 4 CPUs, at least 1)")
      ->check(integer_in(1, 256));
  cli.add_option("--worker-spin", c.worker_spin_us,
                 "Microseconds an idle worker keeps watching the queue before it sleeps: saves a "
                 "wake-up per request when requests come close together, costs CPU while idle "
                 "(default: 50 when workers + I/O threads <= CPUs, else 0)")
      ->check(integer_in(0, 10000));
  cli.add_option("--max-body", c.max_body, "Largest request body in bytes (larger: 413)")
      ->check(integer_in(0, 1LL << 34))
      ->capture_default_str();
  cli.add_option("--max-queue", c.max_queue, "Requests queued for workers before 503")
      ->check(integer_in(1, 1LL << 24))
      ->capture_default_str();
  cli.add_option("--max-connections", c.max_connections,
                 "Open connections; past it new ones are closed at once and counted (default: " +
                     std::to_string(kDefaultMaxConnections) + ", less if the file descriptor limit is lower)")
      ->check(integer_in(1, 10000000));
  cli.add_option("--header-timeout", c.header_timeout,
                 "Seconds a client has to send the request headers")
      ->check(seconds_in(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--keepalive-timeout", c.keepalive_timeout,
                 "Seconds an idle keep-alive connection stays open")
      ->check(seconds_in(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--graceful-timeout", c.graceful_timeout,
                 "Seconds to finish in-flight requests after SIGTERM/SIGINT")
      ->check(seconds_in(0.0, 86400.0))
      ->capture_default_str();
  cli.add_option("--timeout", c.request_timeout,
                 "Seconds from a request's arrival to its response, else 504; a handler still "
                 "running then is interrupted (its worker replaced if it does not stop)")
      ->check(seconds_in(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--shutdown-delay", c.shutdown_delay,
                 "Seconds after SIGTERM during which /readyz answers 503 and the listener still "
                 "accepts, before the drain starts (let a load balancer take the replica out first)")
      ->check(seconds_in(0.0, 3600.0))
      ->capture_default_str();
  cli.add_option("--max-abandoned", c.max_abandoned,
                 "Handler threads stuck past --timeout that may be left running while a fresh "
                 "worker takes their slot; past it the slot is not replaced and /readyz says 503 "
                 "(in-process strategies; default: 2 x workers)")
      ->check(integer_in(1, 100000));
  cli.add_option("--max-requests", c.max_requests,
                 "Recycle a worker after this many requests (0: never)")
      ->check(integer_in(0, 4294967295LL))
      ->capture_default_str();
  cli.add_option("--max-requests-jitter", c.max_requests_jitter,
                 "Add 0..J random requests to --max-requests per worker")
      ->check(integer_in(0, 4294967295LL))
      ->capture_default_str();
  cli.add_flag("--allow-gil", c.allow_gil,
               "free-threaded: serve even if an extension turned the GIL back on");
  cli.add_flag("--preload", c.preload,
               "Import the app once in the main interpreter before the workers start (subinterpreters: "
               "single-phase C extensions then initialize there, and sub-interpreters get a clean "
               "ImportError or the package's pure-Python fallback; processes and threads always do)");
  cli.add_flag("--access-log", c.access_log, "Log one line per request");
  cli.add_flag("--debug", c.debug,
               "Error bodies of a handler's unexpected exception carry its type, text and traceback "
               "(for development: without it they say only 'internal server error')");
  cli.add_flag("--no-dashboard", no_dashboard,
               "Do not serve the live dashboard (GET /dashboard) and its event stream (GET /events)");
  cli.add_option("--log-level", c.log_level, "Log level")
      ->check(one_of({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();

  // Every flag can also be set from the environment, as containers and process
  // managers do: GILGAMESH_<FLAG> (--max-queue: GILGAMESH_MAX_QUEUE). The command line wins.
  for (CLI::Option* opt : cli.get_options()) {
    const auto& names = opt->get_lnames();
    if (names.empty() || names.front() == "help" || names.front() == "version") continue;
    std::string env = "GILGAMESH_";
    for (char ch : names.front()) env += ch == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    opt->envname(env);
  }

  try {
    cli.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << cli.help();
    return {std::nullopt, 0, false};
  } catch (const CLI::ArgumentMismatch& e) {
    // "--workers: 1 required INT in 1..1024 missing": say it plainly.
    std::string what = e.what();
    std::cerr << "gilgamesh: " << what.substr(0, what.find(':')) << " needs a value (see --help)\n";
    return {std::nullopt, 2, false};
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    for (char& ch : what) {
      if (ch == '\n') ch = ' ';
    }
    std::cerr << "gilgamesh: " << what << " (see --help)\n";
    return {std::nullopt, 2, false};
  }
  if (version) return {std::nullopt, 0, true};
  c.dashboard = !no_dashboard;

  const int cpus = usable_cpus();
  if (c.workers == 0) c.workers = cpus;
  if (c.max_abandoned == 0) c.max_abandoned = 2 * c.workers;
  if (c.io_threads == 0) c.io_threads = std::max(1, cpus / 4);
  // Spinning helps only on a core nobody else wants; on a full machine it steals the I/O thread's.
  if (c.worker_spin_us < 0) c.worker_spin_us = c.workers + c.io_threads <= cpus ? 50 : 0;
  if (c.python_build.empty()) c.python_build = c.strategy == "free-threaded" ? "free-threaded" : "default";
  if (c.strategy == "free-threaded" && c.python_build != "free-threaded") {
    std::cerr << "gilgamesh: --strategy free-threaded needs --python-build free-threaded (see --help)\n";
    return {std::nullopt, 2, false};
  }
  if (app_option->count() > 0 && wsgi_option->count() > 0) {
    std::cerr << "gilgamesh: --app and --wsgi are exclusive: --app serves @gilgamesh.route handlers, "
                 "--wsgi a WSGI callable (see --help)\n";
    return {std::nullopt, 2, false};
  }
  if (wsgi_option->count() > 0) {
    const auto colon = wsgi.find(':');
    if (wsgi.empty() || colon == 0 || colon + 1 == wsgi.size()) {
      std::cerr << "gilgamesh: --wsgi takes MODULE:CALLABLE, got '" << wsgi << "' (see --help)\n";
      return {std::nullopt, 2, false};
    }
    c.app = colon == std::string::npos ? wsgi + ":application" : wsgi;
    c.wsgi = true;
  } else if (c.app.find(':') != std::string::npos) {
    std::cerr << "gilgamesh: --app takes a module of @gilgamesh.route handlers; for the WSGI "
                 "callable '" << c.app << "' use --wsgi " << c.app << "\n";
    return {std::nullopt, 2, false};
  }
  if (c.app.empty()) {
    std::cerr << "gilgamesh: --app must name a Python module (see --help)\n";
    return {std::nullopt, 2, false};
  }
  if (!c.root_path.empty()) {
    if (c.root_path.front() != '/') {
      std::cerr << "gilgamesh: --root-path must start with '/', e.g. /api (see --help)\n";
      return {std::nullopt, 2, false};
    }
    while (!c.root_path.empty() && c.root_path.back() == '/') c.root_path.pop_back();
  }
  return {c, 0, false};
}

}  // namespace gilgamesh

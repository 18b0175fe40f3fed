#include "config.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <iostream>

#include "cpu_limit.hpp"

namespace gilgamesh {

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
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 34))
      ->capture_default_str();
  cli.add_option("--pythonpath", c.pythonpath,
                 "Directory to prepend to sys.path (repeatable; the working directory follows)");
  cli.add_option("--strategy", c.strategy, "How Python runs the handlers")
      ->check(CLI::IsMember({"subinterpreters", "threads", "free-threaded", "processes"}))
      ->capture_default_str();
  cli.add_option("--python-build", c.python_build,
                 "CPython build to embed: default or free-threaded (default: free-threaded for "
                 "--strategy free-threaded, else default)")
      ->check(CLI::IsMember({"default", "free-threaded"}));
  cli.add_option("--workers", c.workers,
                 "Worker count (default: the CPUs this process may use: affinity, cgroup CPU quota)")
      ->check(CLI::Range(1, 1024));
  cli.add_option("--host", c.host, "Address to listen on")->capture_default_str();
  cli.add_option("--port", c.port, "TCP port to listen on (0: any free port)")->capture_default_str();
  cli.add_option("--io-threads", c.io_threads, "HTTP I/O threads (default: 1 per 4 CPUs, at least 1)")
      ->check(CLI::Range(1, 256));
  cli.add_option("--max-body", c.max_body, "Largest request body in bytes (larger: 413)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 34))
      ->capture_default_str();
  cli.add_option("--max-queue", c.max_queue, "Requests queued for workers before 503")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 24))
      ->capture_default_str();
  cli.add_option("--header-timeout", c.header_timeout,
                 "Seconds a client has to send the request headers")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--keepalive-timeout", c.keepalive_timeout,
                 "Seconds an idle keep-alive connection stays open")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--graceful-timeout", c.graceful_timeout,
                 "Seconds to finish in-flight requests after SIGTERM/SIGINT")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  cli.add_option("--timeout", c.request_timeout,
                 "Seconds from a request's arrival to its response, else 504; a handler still "
                 "running then is interrupted (its worker replaced if it does not stop)")
      ->check(CLI::Range(0.001, 86400.0))
      ->capture_default_str();
  cli.add_option("--shutdown-delay", c.shutdown_delay,
                 "Seconds after SIGTERM during which /readyz answers 503 and the listener still "
                 "accepts, before the drain starts (let a load balancer take the replica out first)")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  cli.add_option("--max-abandoned", c.max_abandoned,
                 "Handler threads stuck past --timeout that may be left running while a fresh "
                 "worker takes their slot; past it the slot is not replaced and /readyz says 503 "
                 "(in-process strategies; default: 2 x workers)")
      ->check(CLI::Range(1, 100000));
  cli.add_option("--max-requests", c.max_requests,
                 "Recycle a worker after this many requests (0: never)")
      ->capture_default_str();
  cli.add_option("--max-requests-jitter", c.max_requests_jitter,
                 "Add 0..J random requests to --max-requests per worker")
      ->capture_default_str();
  cli.add_flag("--allow-gil", c.allow_gil,
               "free-threaded: serve even if an extension turned the GIL back on");
  cli.add_flag("--access-log", c.access_log, "Log one line per request");
  cli.add_flag("--no-dashboard", no_dashboard,
               "Do not serve the live dashboard (GET /dashboard) and its event stream (GET /events)");
  cli.add_option("--log-level", c.log_level, "Log level")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
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

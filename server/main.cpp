// gilgamesh: parse options, pick the Python build (re-executing the sibling
// binary linked to the other libpython if needed), start the strategy, serve.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "../pyworkers/executor.hpp"
#include "../pyworkers/probe.hpp"
#include "../pyworkers/zygote.hpp"
#include "check.hpp"
#include "config.hpp"
#include "http_server.hpp"

namespace {

// The binaries of the two builds sit side by side: gilgamesh (default
// libpython) and gilgamesh-ft (free-threaded libpython).
std::filesystem::path sibling_binary(const std::string& build) {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return self.parent_path() / (build == "free-threaded" ? "gilgamesh-ft" : "gilgamesh");
}

std::string other_build_version(const std::string& build) {
  auto bin = sibling_binary(build);
  if (bin.empty() || access(bin.c_str(), X_OK) != 0) return {};
  std::string cmd = "'" + bin.string() + "' --version 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {};
  char buf[256];
  std::string first;
  if (fgets(buf, sizeof buf, p)) first = buf;
  if (fgets(buf, sizeof buf, p)) first = buf;  // the second line names the Python
  pclose(p);
  while (!first.empty() && (first.back() == '\n' || first.back() == '\r')) first.pop_back();
  return first;
}

// Raises the soft file descriptor limit to the hard one (as nginx's
// worker_rlimit_nofile and Go's runtime do): every connection is a descriptor.
// Returns the limit in force.
std::size_t raise_fd_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 1024;
  constexpr rlim_t kEnough = 1 << 20;
  const rlim_t want = lim.rlim_max == RLIM_INFINITY ? kEnough : std::min(lim.rlim_max, kEnough);
  if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want) {
    rlimit raised = lim;
    raised.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  return lim.rlim_cur == RLIM_INFINITY ? kEnough : static_cast<std::size_t>(lim.rlim_cur);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gilgamesh;
  if (argc > 1 && std::strcmp(argv[1], kZygoteFlag) == 0) {
    // The processes strategy's zygote, started by the server (zygote_client.hpp).
    spdlog::set_default_logger(spdlog::stderr_color_mt("gilgamesh"));
    spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] [pid %P] %v");
    zygote_main(argc, argv);
  }
  if (argc > 1 && std::strcmp(argv[1], kProbeFlag) == 0) {
    // The start-up probe's disposable child (pyworkers/probe.hpp).
    probe_main(argc, argv, router_resolver());
  }
  if (argc > 1 && std::strcmp(argv[1], "check") == 0) {
    spdlog::set_default_logger(spdlog::stderr_color_mt("gilgamesh"));
    return check_main(argc, argv);
  }
  const std::string this_build = embedded_python_build();
  ParseOutcome parsed = parse_command_line(argc, argv);
  if (parsed.show_version) {
    std::cout << "gilgamesh " << GILGAMESH_VERSION << "\n";
    std::cout << "Python " << embedded_python_version() << " (" << this_build << " build)\n";
    if (!getenv("GILGAMESH_NO_SIBLING_VERSION")) {
      setenv("GILGAMESH_NO_SIBLING_VERSION", "1", 1);
      std::string other = other_build_version(this_build == "default" ? "free-threaded" : "default");
      std::cout << (this_build == "default" ? "free-threaded" : "default") << " build: "
                << (other.empty() ? "not built" : other) << "\n";
    }
    return 0;
  }
  if (!parsed.config) return parsed.exit_code;
  ServerConfig config = *parsed.config;

  spdlog::set_default_logger(spdlog::stderr_color_mt("gilgamesh"));
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] [pid %P] %v");

  if (config.python_build != this_build) {
    // The other libpython lives in the sibling binary: hand over, same arguments.
    auto bin = sibling_binary(config.python_build);
    if (getenv("GILGAMESH_HANDED_OVER") || bin.empty() || access(bin.c_str(), X_OK) != 0) {
      std::cerr << "gilgamesh: the " << config.python_build << " Python build is not available ("
                << (bin.empty() ? "?" : bin.string())
                << " missing); build it with `make` (or set GILGAMESH_PYTHON_FT)\n";
      return 2;
    }
    setenv("GILGAMESH_HANDED_OVER", "1", 1);
    execv(bin.c_str(), argv);
    std::cerr << "gilgamesh: cannot run " << bin << ": " << std::strerror(errno) << "\n";
    return 2;
  }
  unsetenv("GILGAMESH_HANDED_OVER");

  const std::size_t fd_limit = raise_fd_limit();
  const std::size_t fitting = default_max_connections(fd_limit, config.workers);
  if (config.max_connections == 0) {
    config.max_connections = fitting;
    if (fitting < kDefaultMaxConnections) {
      spdlog::warn("the file descriptor limit is {}: at most {} connections (raise ulimit -n for more)",
                   fd_limit, fitting);
    }
  } else if (config.max_connections > fitting) {
    spdlog::warn("--max-connections {} is more than the file descriptor limit {} leaves room for ({}): "
                 "accept will fail for want of descriptors first (the server backs off and recovers)",
                 config.max_connections, fd_limit, fitting);
  }

  ExecutorConfig ec;
  ec.strategy = config.strategy;
  ec.workers = config.workers;
  ec.app = config.app;
  ec.wsgi = config.wsgi;
  ec.root_path = config.root_path;
  ec.max_response = config.max_response;
  ec.pythonpath = config.pythonpath;
  ec.max_queue = config.max_queue;
  ec.worker_spin = std::chrono::microseconds(config.worker_spin_us);
  ec.max_body = config.max_body;
  ec.max_requests = config.max_requests;
  ec.max_requests_jitter = config.max_requests_jitter;
  ec.max_abandoned = config.max_abandoned;
  ec.allow_gil = config.allow_gil;
  ec.preload = config.preload;
  ec.python_build = config.python_build;
  ec.debug = config.debug;
  if (ec.strategy == "auto") {
    const AutoChoice choice = choose_strategy(ec);
    spdlog::info("strategy auto -> {}: {}", choice.strategy, choice.reason);
    ec.strategy = config.strategy = choice.strategy;
    ec.strategy_reason = choice.reason;
  }
  // Proven survivable in a disposable process first: an import that crashes the interpreter
  // must end that process, not this one.
  if (auto refused = guard_import(ec)) {
    spdlog::critical("{}", refused->what());
    if (!refused->detail().empty()) spdlog::error("{}", refused->detail());
    return 1;
  }

  // A peer that closes early must not kill the server (threads inherit the mask;
  // SIGINT/SIGTERM are left to the HTTP server's signal_set).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::unique_ptr<Executor> executor;
  try {
    executor = make_executor(ec);
  } catch (const StartupError& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  // Leaves without finalizing Python: a handler thread may still use it.
  auto leave_now = [](int code) {
    spdlog::shutdown();
    std::fflush(nullptr);
    _exit(code);
  };

  std::unique_ptr<HttpServer> server;
  try {
    server = std::make_unique<HttpServer>(config, *executor);
  } catch (const ListenError& e) {
    spdlog::critical("{}", e.what());
    executor->stop(std::chrono::steady_clock::now());
    executor.reset();
    return 1;
  }

  HttpServer::Outcome outcome;
  try {
    outcome = server->run();
  } catch (const StartupError& e) {
    spdlog::critical("{}", e.what());
    if (!e.detail().empty()) spdlog::error("{}", e.detail());
    const bool clean = executor->stop(std::chrono::steady_clock::now() + std::chrono::seconds(10));
    if (!clean) leave_now(1);
    server.reset();
    executor.reset();
    return 1;
  }
  server.reset();
  if (outcome == HttpServer::Outcome::handlers_left_running) {
    spdlog::warn("exiting without finalizing Python: a handler was still running");
    leave_now(0);
  }
  executor.reset();
  spdlog::shutdown();
  return 0;
}

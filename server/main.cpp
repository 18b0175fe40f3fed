// gilgamesh: parse options, pick the Python build (re-executing the sibling
// binary linked to the other libpython if needed), start the strategy, serve.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include "pyworkers/embedding/probe.hpp"
#include "pyworkers/processes/zygote.hpp"
#include "server/check.hpp"
#include "server/cli.hpp"
#include "server/http/http_server.hpp"
#include "server/model/app_forks.hpp"
#include "server/model/executor.hpp"
#include "server/reload.hpp"

namespace {

using namespace gilgamesh;

// The binaries of the two builds sit side by side: gilgamesh (default
// libpython) and gilgamesh-ft (free-threaded libpython).
std::filesystem::path sibling_binary(PythonBuild build) {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return self.parent_path() / (build == PythonBuild::free_threaded ? "gilgamesh-ft" : "gilgamesh");
}

PythonBuild other_build(PythonBuild b) {
  return b == PythonBuild::standard ? PythonBuild::free_threaded : PythonBuild::standard;
}

std::string other_build_version(PythonBuild build) {
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

// glibc gives the free top of a thread's heap back to the kernel (madvise) as soon as it
// passes M_TRIM_THRESHOLD, 128 KiB until a freed mmap()ed block raises it. A buffer of 64 KiB
// to 1 MiB (a WebSocket message, a request body, their copies) freed and allocated again on
// every message then costs that madvise, a TLB shoot-down on every CPU the process runs on,
// and page faults to map it back. Measured on 64 KiB WebSocket echoes (10 connections, 2
// workers): 5-17 minor faults per round trip and 227 / 548 µs of server CPU on
// subinterpreters / free-threaded; with the settings below, no fault and 97 / 88 µs. They are
// what glibc's own adaptive rule sets once a 2 MiB block has been freed (mmap threshold 2 MiB,
// trim threshold twice that), from the start: idle memory is the same. The user's own
// settings (MALLOC_*_ variables, GLIBC_TUNABLES glibc.malloc.*) win. Every process of the
// server runs this: the processes strategy's zygote and its workers, the start-up probe.
void keep_freed_heap_mapped() {
#ifdef __GLIBC__
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  for (const char* name : {"trim_threshold", "mmap_threshold", "top_pad"}) {
    if (tunables && std::strstr(tunables, (std::string("glibc.malloc.") + name).c_str())) return;
  }
  for (const char* name : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    if (std::getenv(name)) return;
  }
  mallopt(M_MMAP_THRESHOLD, 2 << 20);
  mallopt(M_TRIM_THRESHOLD, 4 << 20);
#endif
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

int print_version() {
  const PythonBuild this_build = embedded_python_build();
  std::cout << "gilgamesh " << GILGAMESH_VERSION << "\n";
  std::cout << "Python " << embedded_python_version() << " (" << python_build_name(this_build)
            << " build)\n";
  if (!getenv("GILGAMESH_NO_SIBLING_VERSION")) {
    setenv("GILGAMESH_NO_SIBLING_VERSION", "1", 1);
    const std::string other = other_build_version(other_build(this_build));
    std::cout << python_build_name(other_build(this_build))
              << " build: " << (other.empty() ? "not built" : other) << "\n";
  }
  return 0;
}

// The other libpython lives in the sibling binary: execs it with the same
// arguments. Returns only on failure, with the exit status.
int hand_over(PythonBuild build, char** argv) {
  auto bin = sibling_binary(build);
  if (getenv("GILGAMESH_HANDED_OVER") || bin.empty() || access(bin.c_str(), X_OK) != 0) {
    std::cerr << "gilgamesh: the " << python_build_name(build) << " Python build is not available ("
              << (bin.empty() ? "?" : bin.string())
              << " missing); build it with `make` (or set GILGAMESH_PYTHON_FT)\n";
    return 2;
  }
  setenv("GILGAMESH_HANDED_OVER", "1", 1);
  execv(bin.c_str(), argv);
  std::cerr << "gilgamesh: cannot run " << bin << ": " << std::strerror(errno) << "\n";
  return 2;
}

// --max-connections against the file descriptor limit (raised first).
void fit_connections(ServerConfig& config) {
  const std::size_t fd_limit = raise_fd_limit();
  const std::size_t fitting = default_max_connections(fd_limit, config.pool.workers);
  auto& max_connections = config.http.max_connections;
  if (max_connections == 0) {
    max_connections = fitting;
    if (fitting < kDefaultMaxConnections) {
      spdlog::warn("the file descriptor limit is {}: at most {} connections (raise ulimit -n for more)",
                   fd_limit, fitting);
    }
  } else if (max_connections > fitting) {
    spdlog::warn("--max-connections {} is more than the file descriptor limit {} leaves room for ({}): "
                 "accept will fail for want of descriptors first (the server backs off and recovers)",
                 max_connections, fd_limit, fitting);
  }
}

// --strategy auto, then the guard: the app's import is proven survivable in a
// disposable process first, since an import that crashes the interpreter must
// end that process, not this one. False: refused (logged).
bool settle_strategy(ServerConfig& config) {
  if (config.pool.strategy == Strategy::automatic) {
    const AutoChoice choice = choose_strategy(config);
    spdlog::info("strategy auto -> {}: {}", strategy_name(choice.strategy), choice.reason);
    config.pool.strategy = choice.strategy;
    config.pool.strategy_reason = choice.reason;
    if (config.app.loop == EventLoop::uvloop && choice.strategy != Strategy::processes) {
      spdlog::critical("{}", uvloop_needs_processes(choice.strategy, true));
      return false;
    }
  }
  if (auto refused = guard_import(config)) {
    spdlog::critical("{}", refused->what());
    if (!refused->detail().empty()) spdlog::error("{}", refused->detail());
    return false;
  }
  return true;
}

// Leaves without finalizing Python: a handler thread may still use it.
[[noreturn]] void leave_now(int code) {
  spdlog::shutdown();
  std::fflush(nullptr);
  _exit(code);
}

// What a restart in place (SIGHUP) executes: this binary as it was found at start-up (by path,
// so that a binary replaced since, by a deploy, is the one that starts), with the same
// arguments and the signal mask it was given.
struct SelfExec {
  std::string path;
  char** argv = nullptr;
  sigset_t mask{};
};

// Executes the server again in this process (same PID: as a container's first process, or
// under systemd's ExecReload=kill -HUP $MAINPID). Returns only if it could not.
int restart_in_place(const Restart& restart, const SelfExec& self) {
  fcntl(restart.fd, F_SETFD, 0);  // the one descriptor that crosses the exec
  setenv(kListenFdVariable, std::to_string(restart.fd).c_str(), 1);
  if (!restart.socket_path.empty()) setenv(kListenFileVariable, restart.socket_path.c_str(), 1);
  setenv(kRestartedVariable, "1", 1);
  spdlog::info("restarting in place: executing {}", self.path);
  spdlog::default_logger()->flush();
  std::fflush(nullptr);
  execv(self.path.c_str(), self.argv);  // SIGHUP still held (hold_hangups)
  const int error = errno;
  spdlog::critical("cannot restart in place: executing {} failed: {}", self.path, std::strerror(error));
  if (!restart.socket_path.empty()) unlink(restart.socket_path.c_str());
  return 1;
}

// From the old server's end until the new one handles it (serve()), SIGHUP must not take its
// default action, the process's end: it is ignored, and blocked in this thread, so that one
// sent once this is the only thread left (the executor gone, across the exec) waits for the
// new server; one that reaches another thread before is ignored.
void hold_hangups() {
  std::signal(SIGHUP, SIG_IGN);
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  sigprocmask(SIG_BLOCK, &hup, nullptr);
}

// Starts the executor and the HTTP server, serves until SIGTERM/SIGINT, drains; after SIGHUP,
// starts again in place.
int serve(const ServerConfig& config, std::optional<int> listener, const SelfExec& self) {
  app_forks::watch();  // before the app is imported: what a process it forks keeps of the server

  std::unique_ptr<Executor> executor;
  try {
    executor = make_executor(config);
  } catch (const StartupError& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }
  std::unique_ptr<HttpServer> server;
  try {
    server = std::make_unique<HttpServer>(config, *executor, listener, take_inherited_socket_file());
    // After a restart in place: SIGHUP, held across the exec, is the server's now (one sent
    // meanwhile comes now).
    unsetenv(kRestartedVariable);
    sigprocmask(SIG_SETMASK, &self.mask, nullptr);
  } catch (const ListenError& e) {
    spdlog::critical("{}", e.what());
    executor->stop(std::chrono::steady_clock::now());
    return 1;
  }
  server->check_before_restart([&config] { return restart_blocker(config); });
  HttpServer::Outcome outcome;
  try {
    outcome = server->run();
  } catch (const StartupError& e) {
    spdlog::critical("{}", e.what());
    if (!e.detail().empty()) spdlog::error("{}", e.detail());
    const bool clean = executor->stop(std::chrono::steady_clock::now() + std::chrono::seconds(10));
    if (!clean) leave_now(1);
    return 1;
  }
  const std::optional<Restart> restart = server->restart();
  if (restart) hold_hangups();  // before the server's signal set goes, and SIGHUP's action with it
  server.reset();
  if (outcome == HttpServer::Outcome::handlers_left_running) {
    if (restart) {
      spdlog::warn("restarting without finalizing Python: a thread still runs in it (see above)");
      return restart_in_place(*restart, self);
    }
    spdlog::warn("exiting without finalizing Python: a thread still runs in it (see above)");
    leave_now(0);
  }
  executor.reset();
  if (restart) return restart_in_place(*restart, self);
  spdlog::shutdown();
  return 0;
}

void set_up_logging() {
  spdlog::set_default_logger(spdlog::stderr_color_mt("gilgamesh"));
  // In UTC, marked Z: in local time an app could move the clock of the lines that follow
  // its import (Django sets the process's TZ to its TIME_ZONE, America/Chicago unless set).
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%eZ] [%^%l%$] [pid %P] %v", spdlog::pattern_time_type::utc);
}

}  // namespace

// What `python` does at start (CPython's signal module, which an embedded interpreter does not
// install): SIGPIPE and SIGXFSZ are ignored, so that a write to a closed socket or pipe, or past
// the file-size limit, fails (EPIPE, EFBIG: BrokenPipeError, OSError) instead of ending the
// process. Every process of the server runs this: the server itself (a client that leaves early),
// the processes strategy's zygote, whose forks are the workers (an app that writes to a pipe its
// reader closed), the start-up probe. A child the app starts with subprocess gets the default
// actions back (restore_signals), as under `python`: `yes | head -1` ends quietly. (Blocking
// SIGPIPE instead, as the server did, passed the blocked mask on to such children.)
void ignore_write_signals() {
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGXFSZ, SIG_IGN);
}

int main(int argc, char** argv) {
  SelfExec self;
  std::error_code path_error;
  self.path = std::filesystem::read_symlink("/proc/self/exe", path_error).string();
  if (path_error) self.path = "/proc/self/exe";
  self.argv = argv;
  sigprocmask(SIG_SETMASK, nullptr, &self.mask);
  if (getenv(kRestartedVariable) != nullptr) sigdelset(&self.mask, SIGHUP);  // held by the restart only
  ignore_write_signals();
  keep_freed_heap_mapped();
  if (argc > 1 && std::strcmp(argv[1], kZygoteFlag) == 0) {
    // The processes strategy's zygote, started by the server (zygote_client.hpp).
    set_up_logging();
    zygote_main(argc, argv);
  }
  if (argc > 1 && std::strcmp(argv[1], kProbeFlag) == 0) {
    // The start-up probe's disposable child (pyworkers/embedding/probe.hpp).
    probe_main(argc, argv, router_resolver());
  }
  if (argc > 1 && std::strcmp(argv[1], "check") == 0) {
    set_up_logging();
    return check_main(argc, argv);
  }
  ParseOutcome parsed = parse_command_line(argc, argv);
  if (parsed.show_version) return print_version();
  if (!parsed.config) return parsed.exit_code;
  ServerConfig config = *parsed.config;

  set_up_logging();
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  if (config.reload.enabled && !getenv(kListenFdVariable)) return reload_main(config, argv);
  if (config.pool.python_build != embedded_python_build()) return hand_over(config.pool.python_build, argv);
  unsetenv("GILGAMESH_HANDED_OVER");
  std::optional<int> listener;  // a --reload supervisor's, or --bind fd://N
  try {
    listener = take_inherited_listener();
    if (!listener && config.http.listen_fd >= 0) {
      listener = adopt_listener(config.http.listen_fd, "--bind fd://" + std::to_string(config.http.listen_fd));
    }
  } catch (const ListenError& e) {
    spdlog::critical("{}", e.what());
    return 1;
  }

  fit_connections(config);
  if (!settle_strategy(config)) return 1;
  return serve(config, listener, self);
}

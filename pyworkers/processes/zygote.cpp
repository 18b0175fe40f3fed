#include "pyworkers/processes/zygote.hpp"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "pyworkers/processes/frames.hpp"
#include "pyworkers/embedding/py_ref.hpp"
#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/embedding/python_runtime.hpp"
#include "pyworkers/embedding/worker_identity.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    std::string out = "killed by signal " + std::to_string(sig);
    if (const char* name = sigabbrev_np(sig)) out += std::string(" (SIG") + name + ")";
    if (WCOREDUMP(status)) out += ", core dumped";
    return out;
  }
  return "wait status " + std::to_string(status);
}

void init_spawn_attributes(posix_spawnattr_t& attr) {
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGCHLD, SIGHUP}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
}

namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr std::size_t kMaxErrorText = 64 * 1024;
constexpr std::size_t kMaxDocText = 4 * 1024;

volatile std::sig_atomic_t g_sigterm_received = 0;
extern "C" void note_sigterm(int) { g_sigterm_received = 1; }

// The zygote and its workers never finalize Python: they leave with _exit,
// after writing out what is buffered.
[[noreturn]] void leave(int code) {
  spdlog::default_logger()->flush();
  std::fflush(nullptr);
  _exit(code);
}

// Python's buffered sys.stdout / sys.stderr, written out. With the GIL.
void flush_python_stdio() {
  for (const char* name : {"stdout", "stderr"}) {
    PyObject* stream = PySys_GetObject(name);  // borrowed
    if (stream == nullptr || stream == Py_None) continue;
    py::Ref r = py::Ref::steal(PyObject_CallMethod(stream, "flush", nullptr));
    if (!r) PyErr_Clear();
  }
}

// Objects that exist now are shared copy-on-write by every worker: gc.freeze()
// keeps the collector from writing to (and so copying) their pages. With the GIL.
void freeze_gc() {
  py::Ref gc = py::Ref::steal(PyImport_ImportModule("gc"));
  py::Ref r = gc ? py::Ref::steal(PyObject_CallMethod(gc.get(), "freeze", nullptr)) : py::Ref();
  if (!r) PyErr_Clear();
}

std::string cut(std::string s, std::size_t max) {
  if (s.size() > max) s.resize(max);
  return s;
}

class Zygote {
 public:
  Zygote(const ServerConfig& config, int control_fd)
      : config_(config), control_fd_(control_fd), pid_(getpid()) {}

  [[noreturn]] void run();

 private:
  bool load_app();
  void spawn(int worker);
  void reap();
  [[noreturn]] void stop(milliseconds grace);
  void wait_children(Clock::time_point until);
  [[noreturn]] void serve_as_worker(int worker, int sock);
  [[noreturn]] static void exit_worker(PyThreadState* ts, int code);
  void send(const nlohmann::json& message, int pass_fd = -1);

  const ServerConfig& config_;
  int control_fd_;
  int sigchld_fd_ = -1;
  pid_t pid_;
  sigset_t worker_mask_;              // the signal mask the server had: workers get it back
  PythonRuntime* runtime_ = nullptr;  // never finalized (see leave())
  std::unique_ptr<PythonApp> app_;
  std::map<pid_t, int> children_;     // live workers: pid -> worker index
};

void Zygote::send(const nlohmann::json& message, int pass_fd) {
  if (!frames::send_control(control_fd_, message, pass_fd)) {
    spdlog::debug("zygote: cannot send {} to the server: {}", message.value("type", "?"),
                  std::strerror(errno));
  }
}

void Zygote::run() {
  // Ctrl-C reaches the whole process group, and a service manager may send
  // SIGTERM to every process: the server handles both and ends the zygote
  // through the control socket.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &worker_mask_);
  sigchld_fd_ = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigchld_fd_ < 0) {
    send({{"type", "failed"}, {"error", std::string("zygote: signalfd: ") + std::strerror(errno)}});
    leave(1);
  }
  if (!load_app()) leave(1);

  for (;;) {
    pollfd fds[2] = {{control_fd_, POLLIN, 0}, {sigchld_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::critical("zygote: poll: {}", std::strerror(errno));
      stop(0ms);
    }
    if (fds[1].revents != 0) reap();
    if (fds[0].revents == 0) continue;
    frames::ControlMessage message;
    std::string error;
    if (!frames::receive_control(control_fd_, message, &error)) {
      spdlog::debug("zygote: control socket: {}; stopping", error);
      stop(0ms);  // the server is gone, or done with us
    }
    if (message.fd >= 0) ::close(message.fd);
    const std::string type = message.body.value("type", "");
    if (type == "spawn") {
      spawn(message.body.value("worker", -1));
    } else if (type == "stop") {
      stop(milliseconds(std::max(0, message.body.value("grace_ms", 0))));
    } else {
      spdlog::warn("zygote: unknown control message {}", message.body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
  }
}

bool Zygote::load_app() {
  std::string error, detail;
  std::vector<RouteInfo> routes;
  bool gil_enabled = true;
  try {
    runtime_ = new PythonRuntime();
    py::AttachedScope attached(runtime_->main_thread_state());
    try {
      app_ = PythonApp::load(config_.app, load_context(config_, false));
      routes = app_->routes();
      gil_enabled = PythonApp::gil_enabled();
      freeze_gc();
    } catch (const StartupError& e) {
      error = e.what();
      detail = e.detail();
    } catch (const std::exception& e) {
      error = e.what();
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!error.empty()) {
    send({{"type", "failed"}, {"error", cut(error, kMaxErrorText)}, {"detail", cut(detail, kMaxErrorText)}});
    return false;
  }
  for (const RouteInfo& r : routes) {
    send({{"type", "route"}, {"path", r.path}, {"methods", r.methods}, {"doc", cut(r.doc, kMaxDocText)}});
  }
  send({{"type", "ready"}, {"gil_enabled", gil_enabled}});
  return true;
}

void Zygote::spawn(int worker) {
  if (worker < 0 || worker >= config_.pool.workers) {
    spdlog::warn("zygote: asked to spawn worker {}, which does not exist", worker);
    return;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    send({{"type", "spawn_failed"}, {"worker", worker},
          {"error", std::string("socketpair: ") + std::strerror(errno)}});
    return;
  }
  std::fflush(nullptr);
  spdlog::default_logger()->flush();
  pid_t pid;
  int fork_errno = 0;
  {
    // fork() with the GIL held, between PyOS_BeforeFork and AfterFork, as os.fork() does.
    py::AttachedScope attached(runtime_->main_thread_state());
    PyOS_BeforeFork();
    pid = fork();
    if (pid == 0) {
      PyOS_AfterFork_Child();
      ::close(sv[0]);
      try {
        serve_as_worker(worker, sv[1]);
      } catch (const std::exception& e) {
        // Never unwind into the zygote's code in a worker.
        spdlog::critical("worker {}: {}", worker, e.what());
        leave(1);
      }
    }
    fork_errno = errno;
    PyOS_AfterFork_Parent();
  }
  ::close(sv[1]);
  if (pid < 0) {
    ::close(sv[0]);
    send({{"type", "spawn_failed"}, {"worker", worker},
          {"error", std::string("fork: ") + std::strerror(fork_errno)}});
    return;
  }
  children_[pid] = worker;
  // The server gets its end; a worker whose end could not be delivered sees
  // end of stream once it is closed here, and exits.
  send({{"type", "spawned"}, {"worker", worker}, {"pid", pid}}, sv[0]);
  ::close(sv[0]);
}

void Zygote::reap() {
  signalfd_siginfo info;
  while (::read(sigchld_fd_, &info, sizeof info) > 0) {
  }
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    auto it = children_.find(pid);
    int worker = -1;
    if (it != children_.end()) {
      worker = it->second;
      children_.erase(it);
    }
    send({{"type", "exited"}, {"worker", worker}, {"pid", pid}, {"status", describe_wait_status(status)}});
  }
}

void Zygote::wait_children(Clock::time_point until) {
  for (;;) {
    reap();
    if (children_.empty()) return;
    auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now()).count();
    if (left <= 0) return;
    pollfd p{sigchld_fd_, POLLIN, 0};
    poll(&p, 1, static_cast<int>(std::min<long long>(left, 50)));
  }
}

void Zygote::stop(milliseconds grace) {
  // The server has closed its ends of the worker sockets: idle workers are
  // already leaving. Then SIGTERM (a worker finishes its request first), then SIGKILL.
  wait_children(Clock::now() + grace);
  for (const auto& [pid, worker] : children_) ::kill(pid, SIGTERM);
  wait_children(Clock::now() + 1s);
  for (const auto& [pid, worker] : children_) {
    spdlog::warn("zygote: worker {} (pid {}) did not exit; killing it", worker, pid);
    ::kill(pid, SIGKILL);
  }
  wait_children(Clock::now() + 5s);
  leave(children_.empty() ? 0 : 1);
}

void Zygote::exit_worker(PyThreadState* ts, int code) {
  PyEval_RestoreThread(ts);
  flush_python_stdio();
  leave(code);
}

// In the freshly forked worker, with the GIL held, after PyOS_AfterFork_Child.
// Not tied to the zygote's life: it leaves when its socket to the server closes.
void Zygote::serve_as_worker(int worker, int sock) {
  prctl(PR_SET_NAME, ("gilg-worker-" + std::to_string(worker)).c_str());  // for ps/top
  ::close(control_fd_);
  ::close(sigchld_fd_);
  // SIGTERM between requests ends the worker cleanly; during one, after it.
  struct sigaction term{};
  term.sa_handler = note_sigterm;
  sigemptyset(&term.sa_mask);
  sigaction(SIGTERM, &term, nullptr);
  sigprocmask(SIG_SETMASK, &worker_mask_, nullptr);
  current_worker() = {strategy_name(Strategy::processes).data(), worker};
  const std::size_t route_count = app_->routes().size();
  PyThreadState* ts = PyEval_SaveThread();

  if (!frames::write_frame(sock, frames::Kind::hello, std::to_string(getpid()), {})) exit_worker(ts, 1);
  frames::Limits limits;
  limits.max_body = config_.http.max_body;
  for (;;) {
    if (g_sigterm_received) exit_worker(ts, 0);
    // One blocking recv per request: SIGTERM (no SA_RESTART) interrupts the wait.
    frames::Frame frame;
    const frames::ReadResult read = frames::read_frame(sock, frame, limits, &g_sigterm_received);
    if (read.status == frames::ReadStatus::closed) exit_worker(ts, 0);  // recycled, or shutdown
    if (read.status == frames::ReadStatus::failed && read.error == EINTR) exit_worker(ts, 0);
    std::size_t route = 0;
    HttpRequestData request;
    if (!read.ok() || frame.kind != frames::Kind::request ||
        !frames::decode_request_meta(frame.meta, route, request)) {
      spdlog::error("worker {}: bad request frame from the server ({}); exiting", worker,
                    read.ok() ? "malformed" : read.describe());
      exit_worker(ts, 1);
    }
    request.body = std::move(frame.body);
    HttpResponseData response;
    if (route >= route_count) {
      response = make_error_response(500, "no route #" + std::to_string(route), request.request_id);
    } else {
      py::AttachedScope attached(ts);
      response = app_->handle(route, request);
    }
    if (!frames::write_frame(sock, frames::Kind::response, frames::encode_response_meta(response),
                             response.body)) {
      exit_worker(ts, 1);  // the server closed the socket (shutdown deadline passed)
    }
  }
}

}  // namespace

void zygote_main(int argc, char** argv) {
  // Die with the server. It may have died before the signal was armed.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  const pid_t server_pid = argc > 3 ? static_cast<pid_t>(std::atoll(argv[3])) : 0;
  if (argc != 5 || getppid() != server_pid) _exit(1);
  prctl(PR_SET_NAME, "gilg-zygote");  // for ps/top
  const int control_fd = std::atoi(argv[2]);
  const nlohmann::json payload = nlohmann::json::parse(argv[4], nullptr, false);
  if (!payload.is_object()) _exit(1);
  spdlog::set_level(spdlog::level::from_str(payload.value("log_level", std::string("info"))));
  try {
    const ServerConfig config = payload.at("config").get<ServerConfig>();
    Zygote zygote(config, control_fd);
    zygote.run();
  } catch (const std::exception& e) {
    spdlog::critical("zygote: {}", e.what());
  }
  leave(1);
}

}  // namespace gilgamesh

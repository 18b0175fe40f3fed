#include "pyworkers/processes/zygote.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
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
#include <mutex>
#include <thread>
#include <vector>

#include "pyworkers/processes/asgi_child.hpp"
#include "pyworkers/processes/frames.hpp"
#include "pyworkers/embedding/app_threads.hpp"
#include "pyworkers/embedding/py_ref.hpp"
#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/embedding/python_runtime.hpp"
#include "pyworkers/embedding/worker_identity.hpp"
#include "server/model/app_forks.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

EventLoopChoice choose_event_loop(const AppOptions& app) {
  EventLoopChoice choice;
  if (app.kind != AppKind::asgi || app.loop == EventLoop::asyncio) return choice;
  const char* given = app.loop == EventLoop::uvloop ? "uvloop" : "auto";
  py::Ref uvloop = py::Ref::steal(PyImport_ImportModule("uvloop"));
  if (!uvloop) {
    choice.uvloop_error = py::fetch_error_summary();
    if (app.loop == EventLoop::uvloop) {
      choice.refusal = "--loop uvloop, but the worker processes cannot import uvloop (" + choice.uvloop_error +
                       "): install it where the app's packages are (--pythonpath, PYTHONPATH), or use --loop asyncio";
    }
    choice.description = fmt::format("asyncio's (--loop auto; uvloop: {})", choice.uvloop_error);
    return choice;
  }
  py::Ref version = py::Ref::steal(PyObject_GetAttrString(uvloop.get(), "__version__"));
  if (!version) PyErr_Clear();
  choice.loop = EventLoop::uvloop;
  choice.uvloop_version = version ? py::to_string(version.get()) : "?";
  choice.description = fmt::format("uvloop {} (--loop {})", choice.uvloop_version, given);
  return choice;
}

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

// A worker process's side of an answer that streams: the head, each chunk and
// the end go to the server as frames on the lane's socket (frames.hpp). A
// full socket holds the handler back (the server's buffer is full: its client
// is slow). After each chunk a `cancel` from the server (the client left) is
// looked for without waiting. Called with no thread state attached. `carry`
// is the lane's read buffer (serve_lane's): a cancel may come in one read with
// what follows it.
class FrameSink final : public ResponseSink {
 public:
  FrameSink(int sock, std::string& carry) : sock_(sock), carry_(carry) {}

  bool open(HttpResponseData&& head) override {
    opened_ = true;
    return write(frames::Kind::head, frames::encode_response_meta(head), {});
  }
  bool push(std::string_view chunk) override {
    if (cancelled_ || !write(frames::Kind::chunk, {}, chunk)) return false;
    if (carry_.empty()) {
      pollfd p{sock_, POLLIN, 0};
      if (poll(&p, 1, 0) <= 0) return true;
    }
    frames::Frame frame;
    frames::Limits limits;
    limits.max_body = 0;
    const frames::ReadResult read = frames::read_frame_buffered(sock_, frame, carry_, limits);
    if (!read.ok() || frame.kind != frames::Kind::cancel) broken_ = true;  // the server left, or garbage
    cancelled_ = true;
    return false;
  }
  void finish(bool ok) override {
    // After a cancel too: the server reads (and drops) what comes until the end.
    if (opened_ && !ended_) write(frames::Kind::end, ok ? "1" : "0", {});
    ended_ = true;
  }
  bool opened() const override { return opened_; }
  // The file goes to the server (a `file` frame with its descriptor), which reads it.
  bool takes_files() const override { return true; }
  bool open_file(HttpResponseData&& head, Fd&& fd, std::uint64_t offset, std::uint64_t length) override {
    opened_ = true;
    ended_ = true;  // the server ends the body
    if (broken_) return false;
    if (!frames::write_frame_with_fd(sock_, frames::Kind::file, frames::encode_file_meta(head, offset, length),
                                     fd.fd)) {
      broken_ = true;
    }
    return !broken_;
  }
  // The socket can no longer be trusted: the lane must go.
  bool broken() const { return broken_; }

 private:
  bool write(frames::Kind kind, std::string_view meta, std::string_view body) {
    if (broken_) return false;
    if (!frames::write_frame(sock_, kind, meta, body)) broken_ = true;
    return !broken_;
  }

  const int sock_;
  std::string& carry_;
  bool opened_ = false;
  bool ended_ = false;
  bool cancelled_ = false;
  bool broken_ = false;
};

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr std::size_t kMaxErrorText = 64 * 1024;
constexpr std::size_t kMaxDocText = 4 * 1024;

// A worker's lane sockets, for its SIGTERM handler: shut for reading, each
// lane's wait for its next request ends (end of stream) and the server's next
// write there fails. Set before the handler is installed.
constexpr int kMaxLanes = 1024;
int g_lane_fds[kMaxLanes];
int g_lane_count = 0;

// An ASGI worker's wake-up (an eventfd its main thread polls), or -1.
int g_wake_fd = -1;

volatile std::sig_atomic_t g_sigterm_received = 0;
extern "C" void note_sigterm(int) {
  const int saved = errno;
  g_sigterm_received = g_sigterm_received + 1;  // a count: see wait_for_app_threads
  for (int i = 0; i < g_lane_count; ++i) ::shutdown(g_lane_fds[i], SHUT_RD);
  if (g_wake_fd >= 0) {
    const std::uint64_t one = 1;
    (void)!::write(g_wake_fd, &one, sizeof one);
  }
  errno = saved;
}

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

// --loop, for an ASGI app's worker processes: the choice goes into the zygote's copy
// of the config, which the workers it forks read. Empty, or why the server must not start.
std::string settle_event_loop(AppOptions& app) {
  const EventLoopChoice choice = choose_event_loop(app);
  if (!choice.refusal.empty()) return choice.refusal;
  if (!choice.description.empty()) spdlog::info("event loop of each worker process: {}", choice.description);
  app.loop = choice.loop;
  return {};
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
  struct Lane;
  [[noreturn]] void serve_as_worker(int worker, const std::vector<int>& lane_fds, int control);
  [[noreturn]] void serve_asgi(int worker, int sock);
  bool serve_lane(int worker, Lane& lane);
  void serve_control(int control, std::vector<Lane>& lanes, PyInterpreterState* interp,
                     PyObject* handler_timeout);
  [[noreturn]] void exit_worker(PyThreadState* ts, int code);
  void send(const nlohmann::json& message, std::span<const int> pass_fds = {});

  ServerConfig config_;  // a copy: load_app() settles --loop auto in it, before the forks
  int control_fd_;
  int sigchld_fd_ = -1;
  pid_t pid_;
  sigset_t worker_mask_;              // the signal mask the server had: workers get it back
  PythonRuntime* runtime_ = nullptr;  // never finalized (see leave())
  std::unique_ptr<PythonApp> app_;
  std::map<pid_t, int> children_;     // live workers: pid -> worker index
};

void Zygote::send(const nlohmann::json& message, std::span<const int> pass_fds) {
  if (!frames::send_control(control_fd_, message, pass_fds)) {
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
    message.close_fds();
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
      error = settle_event_loop(config_.app);
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
  // One socket per lane, and a control socket when there are several lanes:
  // ours[i] goes to the server, theirs[i] stays in the worker.
  const int lanes = std::clamp(config_.pool.threads, 1, kMaxLanes);
  std::vector<int> ours, theirs;
  auto close_all = [](std::vector<int>& fds) {
    for (int fd : fds) ::close(fd);
    fds.clear();
  };
  for (int i = 0; i < lanes + (lanes > 1 ? 1 : 0); ++i) {
    int sv[2];
    const int type = i < lanes ? SOCK_STREAM : SOCK_SEQPACKET;
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) < 0) {
      const int error = errno;
      close_all(ours);
      close_all(theirs);
      send({{"type", "spawn_failed"}, {"worker", worker},
            {"error", std::string("socketpair: ") + std::strerror(error)}});
      return;
    }
    ours.push_back(sv[0]);
    theirs.push_back(sv[1]);
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
      close_all(ours);
      const int control = lanes > 1 ? theirs.back() : -1;
      if (lanes > 1) theirs.pop_back();
      try {
        serve_as_worker(worker, theirs, control);
      } catch (const std::exception& e) {
        // Never unwind into the zygote's code in a worker.
        spdlog::critical("worker {}: {}", worker, e.what());
        leave(1);
      }
    }
    fork_errno = errno;
    PyOS_AfterFork_Parent();
  }
  close_all(theirs);
  if (pid < 0) {
    close_all(ours);
    send({{"type", "spawn_failed"}, {"worker", worker},
          {"error", std::string("fork: ") + std::strerror(fork_errno)}});
    return;
  }
  children_[pid] = worker;
  // The server gets its ends; a worker whose ends could not be delivered sees
  // end of stream once they are closed here, and exits.
  send({{"type", "spawned"}, {"worker", worker}, {"pid", pid}, {"lanes", lanes}}, ours);
  close_all(ours);
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
  if (code == 0) {
    // Leaving on its own (drained, recycled, SIGTERM): Python's exit would wait
    // for the threads the app started; this waits until --graceful-timeout, or a
    // SIGTERM that comes meanwhile (the zygote's, once the server's is over).
    const std::vector<std::string> left =
        wait_for_app_threads(ts, Clock::now() + seconds_setting(config_.http.graceful_timeout), &g_sigterm_received);
    if (!left.empty()) {
      spdlog::warn("worker {}: thread(s) {} that the app started still run: the worker leaves without them",
                   current_worker().worker, describe_threads(left));
    }
  }
  PyEval_RestoreThread(ts);
  flush_python_stdio();
  leave(code);
}

// One lane of a worker process, as its own thread and the control thread see it.
struct Zygote::Lane {
  int index = 0;
  int sock = -1;
  PyThreadState* ts = nullptr;  // this lane's thread's own; detached while it waits
  unsigned long thread_id = 0;  // for PyThreadState_SetAsyncExc
  std::uint64_t received = 0;   // requests read so far (the lane's thread only)
  std::string carry;            // bytes read past the last frame (the lane's thread only)
  bool failed = false;          // it left because its answer could not be written
  // The control thread holds it while it raises; the lane's thread takes it only
  // detached, so neither waits for it while holding the GIL.
  std::mutex mutex;
  std::uint64_t running = 0;  // the request number being handled; 0: none
  bool raised = false;        // HandlerTimeout was set in this lane's thread and may be pending
};

// In the freshly forked worker, with the GIL held, after PyOS_AfterFork_Child.
// Not tied to the zygote's life: it leaves when its sockets to the server close.
void Zygote::serve_as_worker(int worker, const std::vector<int>& lane_fds, int control) {
  prctl(PR_SET_NAME, ("gilg-worker-" + std::to_string(worker)).c_str());  // for ps/top
  app_forks::watch();  // from here on, not in the zygote: its own forks are these workers
  ::close(control_fd_);
  ::close(sigchld_fd_);
  if (config_.app.kind == AppKind::asgi) serve_asgi(worker, lane_fds.at(0));
  std::vector<Lane> lanes(lane_fds.size());
  for (std::size_t i = 0; i < lanes.size(); ++i) {
    lanes[i].index = static_cast<int>(i);
    lanes[i].sock = lane_fds[i];
    g_lane_fds[i] = lane_fds[i];
  }
  g_lane_count = static_cast<int>(lanes.size());
  // SIGTERM between requests ends the worker cleanly; during one, after it.
  struct sigaction term{};
  term.sa_handler = note_sigterm;
  sigemptyset(&term.sa_mask);
  sigaction(SIGTERM, &term, nullptr);
  current_worker() = {strategy_name(Strategy::processes).data(), worker};
  PyObject* handler_timeout = nullptr;  // kept for the process's life
  if (control >= 0) {
    py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
    handler_timeout = api ? PyObject_GetAttrString(api.get(), "HandlerTimeout") : nullptr;
    if (handler_timeout == nullptr) {
      spdlog::error("worker {}: cannot find gilgamesh.HandlerTimeout ({}): --timeout will not "
                    "interrupt its handlers", worker, py::fetch_error_summary());
    }
  }
  PyInterpreterState* interp = PyThreadState_GetInterpreter(PyThreadState_Get());
  lanes[0].ts = PyEval_SaveThread();
  lanes[0].thread_id = PyThread_get_thread_ident();

  // The other lanes and the control thread take no signal: SIGTERM reaches the
  // main thread (lane 0), whose wait it interrupts, as with one lane.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, nullptr);
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < lanes.size(); ++i) {
    threads.emplace_back([this, worker, interp, &lane = lanes[i]] {
      lane.ts = PyThreadState_New(interp);  // bound to this thread
      lane.thread_id = PyThread_get_thread_ident();
      {
        py::AttachedScope attached(lane.ts);
        adopt_server_thread();  // lane 0 is Python's main thread already
      }
      current_worker() = {strategy_name(Strategy::processes).data(), worker};
      if (!serve_lane(worker, lane)) exit_worker(lane.ts, 1);
      // Its thread state stays: the process leaves with _exit, never finalizing.
    });
  }
  if (control >= 0) {
    // Detached: it waits on the control socket until the process exits.
    std::thread([this, control, &lanes, interp, handler_timeout] {
      serve_control(control, lanes, interp, handler_timeout);
    }).detach();
  }
  sigprocmask(SIG_SETMASK, &worker_mask_, nullptr);

  if (!frames::write_frame(lanes[0].sock, frames::Kind::hello, std::to_string(getpid()), {})) {
    exit_worker(lanes[0].ts, 1);
  }
  if (!serve_lane(worker, lanes[0])) exit_worker(lanes[0].ts, 1);
  // Lane 0 is done (its socket closed, or SIGTERM): the others finish what they hold.
  for (auto& t : threads) t.join();
  bool failed = false;
  for (const Lane& lane : lanes) failed = failed || lane.failed;
  exit_worker(lanes[0].ts, failed ? 1 : 0);
}

// An ASGI app's worker: one event loop, one socket (asgi_child.hpp). SIGTERM
// wakes its reader, which lets the loop finish what it holds.
void Zygote::serve_asgi(int worker, int sock) {
  g_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (g_wake_fd < 0) {
    spdlog::critical("worker {}: eventfd: {}", worker, std::strerror(errno));
    leave(1);
  }
  struct sigaction term{};
  term.sa_handler = note_sigterm;
  sigemptyset(&term.sa_mask);
  sigaction(SIGTERM, &term, nullptr);
  sigprocmask(SIG_SETMASK, &worker_mask_, nullptr);
  current_worker() = {strategy_name(Strategy::processes).data(), worker};
  PyThreadState* ts = PyEval_SaveThread();
  const int code = serve_asgi_socket(worker, sock, *app_, config_, g_wake_fd, &g_sigterm_received);
  exit_worker(ts, code);
}

// Serves one lane until its socket closes (the server ended the worker, or
// SIGTERM shut it). No thread state attached on entry and exit. False: the
// server sent something that is not a request (the process must go).
bool Zygote::serve_lane(int worker, Lane& lane) {
  const std::size_t route_count = app_->routes().size();
  frames::Limits limits;
  limits.max_body = config_.http.max_body;
  for (;;) {
    if (g_sigterm_received) return true;
    // One blocking recv per request: SIGTERM (no SA_RESTART) interrupts lane 0's
    // wait, and shuts every lane's socket for reading.
    frames::Frame frame;
    // Buffered: a `cancel` for an answer already over can arrive in one read with
    // the next request (the server cannot know the answer ended before its cancel).
    const frames::ReadResult read =
        frames::read_frame_buffered(lane.sock, frame, lane.carry, limits, &g_sigterm_received);
    if (read.status == frames::ReadStatus::closed) return true;  // recycled, or shutdown
    if (read.status == frames::ReadStatus::failed && read.error == EINTR) return true;
    if (read.ok() && frame.kind == frames::Kind::cancel) continue;  // for an answer already over
    std::size_t route = 0;
    HttpRequestData request;
    if (!read.ok() || frame.kind != frames::Kind::request ||
        !frames::decode_request_meta(frame.meta, route, request)) {
      spdlog::error("worker {}: bad request frame from the server on lane {} ({}); exiting", worker,
                    lane.index, read.ok() ? "malformed" : read.describe());
      return false;
    }
    request.body = std::move(frame.body);
    const std::uint64_t number = ++lane.received;
    {
      std::lock_guard lock(lane.mutex);
      lane.running = number;
    }
    HttpResponseData response;
    FrameSink sink(lane.sock, lane.carry);
    if (route >= route_count) {
      response = make_error_response(500, "no route #" + std::to_string(route), request.request_id);
    } else {
      py::AttachedScope attached(lane.ts);
      response = app_->handle(route, request, &sink);
    }
    bool raised;
    {
      std::lock_guard lock(lane.mutex);
      lane.running = 0;
      raised = std::exchange(lane.raised, false);
    }
    if (raised) {
      // Set, but maybe not raised yet: it must not fire in the next request.
      py::AttachedScope attached(lane.ts);
      PyThreadState_SetAsyncExc(lane.thread_id, nullptr);
    }
    if (sink.opened()) {
      sink.finish(false);  // a no-op after the handler's own end
      if (!sink.broken()) continue;
      lane.failed = true;
      return true;
    }
    if (!frames::write_frame(lane.sock, frames::Kind::response, frames::encode_response_meta(response),
                             response.body)) {
      lane.failed = true;  // the server closed the socket (shutdown deadline passed)
      return true;
    }
  }
}

// The worker control socket's reader (lanes > 1): raises HandlerTimeout in the
// lane named, if it still runs the request named. It may wait for the GIL
// (a handler busy in C holds it); the server never waits for it.
void Zygote::serve_control(int control, std::vector<Lane>& lanes, PyInterpreterState* interp,
                           PyObject* handler_timeout) {
  PyThreadState* ts = PyThreadState_New(interp);  // bound to this thread
  frames::WorkerControl message;
  while (frames::receive_worker_control(control, message)) {
    if (message.kind != frames::WorkerControlKind::interrupt || message.lane >= lanes.size() ||
        handler_timeout == nullptr) {
      continue;
    }
    Lane& lane = lanes[message.lane];
    std::lock_guard lock(lane.mutex);
    if (lane.running != message.number) continue;  // that request has answered
    py::AttachedScope attached(ts);
    if (PyThreadState_SetAsyncExc(lane.thread_id, handler_timeout) > 0) lane.raised = true;
  }
  // End of stream: the server has ended this worker; the lanes see it too.
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

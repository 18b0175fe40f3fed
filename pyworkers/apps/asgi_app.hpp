// The C++ half of the ASGI adapter (ASGI 3: HTTP, WebSocket and lifespan). The Python
// half (apps/gilgamesh_asgi.py, embedded as `_gilgamesh_asgi`) runs the
// protocol on an asyncio event loop; this file gives it its thread and its
// requests, and takes its answers back to the connections.
//
//   AsgiApp   the app as loaded (PythonApp::load, like every kind): the ASGI
//             callable that `--asgi MODULE:APP` names. Its requests never go
//             through PythonApp::handle.
//   AsgiLoop  one worker's event loop, on a thread of its own with a thread
//             state of the worker's interpreter: it runs the lifespan startup,
//             then serves every request the worker holds (up to
//             --worker-connections at once), then the lifespan shutdown. A
//             route app's `async def` handlers run on such a loop too.
//
// How a request travels, with no Python on any other thread and no polling:
// an ASGI app's loop in the pool's own process pulls its jobs from the pool's
// queue itself (pull_from: before its selector waits, mailbox.pull() takes a
// share of what is queued, as much as it has room for, or parks the loop so that
// the next push rings its eventfd): no thread stands between the I/O thread and
// the loop. A worker process's loop watches the server's socket beside its
// eventfd and reads it itself (Hooks::read, mailbox.read()): what it reads it
// submits on its own thread, and begins as soon as the read returns. A route
// app's `async def` calls come from the pool's lane (submit: the Job joins
// `pending_` and a "request" event goes to the inbox). The inbox rings the same
// eventfd, which the loop watches with add_reader, and the loop takes the
// events (mailbox.take()).
// The loop answers through the mailbox's other functions (gilgamesh_asgi.py's
// docstring lists them): a whole answer in one hand-off, or a head and then a
// body through a BodyStream that never blocks the loop (offer(): when its
// buffer is full, a "room" event comes once the client took it). A client that
// leaves is seen by the pool's supervisor (supervise(): a "gone" event), or by
// the stream; the app that then stops unanswered is answered 499 (left()), as the
// pool answers a queued request whose client left. At a request's deadline the
// loop cancels its task itself; a loop that stays blocked past a deadline (a
// handler spinning in CPU code) is what supervise() reports, so that the worker
// interrupts the loop's thread.
//
// A WebSocket is a request too (its Job carries a WebSocketChannel): the loop
// gets "ws_connect" instead of "request", answers the upgrade with ws_accept
// (the job's answer is the 101) or ws_close (403), and then talks to the
// connection through the channel: ws_send/ws_more/ws_close one way,
// "ws_message"/"ws_closed"/"room" events the other. Its place on the loop is
// held until done(rid), like any request's.
#pragma once

#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/pool/worker.hpp"
#include "server/model/file_body.hpp"

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace gilgamesh {

class AsgiApp final : public PythonApp {
 public:
  // Finds the app named after the ':' of options.target in `module`. With the
  // GIL. nullptr with a Python exception set when it is missing or not callable.
  static std::unique_ptr<AsgiApp> create(const AppOptions& options, PyObject* module, ErrorTypes errors);
  ~AsgiApp() override;

  PyObject* callable() const { return app_.get(); }  // borrowed
  bool on_loop(std::size_t) const override { return true; }
  bool needs_loop() const override { return true; }

 private:
  AsgiApp(const AppOptions& options, ErrorTypes errors) : PythonApp(options, std::move(errors)) {}
  // Never called: an AsgiLoop serves the requests. Answers 500 if it were.
  std::optional<HttpResponseData> respond(std::size_t, const HttpRequestData&, StreamWriter&) override;
  void release_kind() override { app_.reset(); }

  py::Ref app_;
};

class AsgiLoop {
 public:
  // Called on the loop's thread with its thread state attached, once it exists
  // (entered) and before it is deleted (leaving, detached): the worker keeps
  // what it needs to interrupt that thread.
  // `released`: a request has left the loop (answered or not; its Job is
  // about to go), called without a Python lock from whichever thread let it go.
  // `pulls`: the loop takes its requests from the pool's queue itself (pull_from),
  // rather than having a lane submit() them (an ASGI app's loop in the pool's own
  // process; a route app's loop gets them from a lane, a worker process's reads
  // them, below).
  // `read`, with `read_fd`: the loop reads its requests itself, from a socket it
  // watches (a worker process's loop, the server's socket): whenever `read_fd` is
  // readable, the loop calls `read` on its own thread, with no Python lock held;
  // `read` handles what came and gives each new request to submit(). False: the
  // socket is over, and the loop stops watching it.
  struct Hooks {
    std::function<void()> entered;
    std::function<void()> leaving;
    std::function<void(const Job&)> released;
    bool pulls = false;
    std::function<bool()> read;
    int read_fd = -1;
    // Called on the loop's thread before each wait (no Python lock held): what it
    // held back while the callbacks ran goes out now.
    std::function<void()> idle;
    // A worker process's loop: the answer to `job` whose body is `length` bytes of the
    // regular file `fd` (http.response.pathsend) goes to the server with the descriptor,
    // which reads the file. False: the server is gone. Without it the connection is given a
    // stream that reads the file (file_body.hpp). No Python lock held.
    std::function<bool(const Job& job, HttpResponseData&& head, Fd&& fd, std::uint64_t length)> send_file;
  };

  // `interp` is the interpreter that loaded `app`; both outlive the loop. An
  // AsgiApp's loop runs its ASGI callable for every request; another app's (a
  // route app with `async def` handlers) runs the calls of those handlers.
  AsgiLoop(PyInterpreterState* interp, PythonApp& app, const ServerConfig& config, Hooks hooks);
  ~AsgiLoop();
  AsgiLoop(const AsgiLoop&) = delete;
  AsgiLoop& operator=(const AsgiLoop&) = delete;

  // Starts the thread and waits for the lifespan startup. Throws StartupError
  // (the app's message) when it failed. No Python lock may be held.
  void start();
  // Takes the job over: the loop answers it. From a lane's thread, or from
  // within Hooks::read on the loop's own (then the loop begins the job as soon
  // as `read` returns, with no wake-up between).
  void submit(Job& job);
  // A loop that pulls (Hooks::pulls): where from, while its worker serves; nullptr
  // detaches (returns once no pull runs). The loop looks at once. Any thread.
  bool pulls() const { return hooks_.pulls; }
  void pull_from(JobSource* source);
  // Wakes the loop: it pulls when it next looks. Any thread; never blocks.
  void ring();
  // Waits until the loop holds fewer than --worker-connections requests, or
  // until `until`. False: still full.
  bool wait_for_room(Clock::time_point until);
  // Requests on the loop now.
  std::size_t in_flight() const;
  // From the pool's supervisor, now and then: tells the loop about clients that
  // left, and says whether the loop is blocked (a request it should have
  // cancelled at its deadline is still there), so that it must be interrupted.
  // Never blocks on Python.
  bool supervise(Clock::time_point now);
  // Whether HandlerTimeout raised into loop thread `thread_id` now would land in a
  // request's code (an asyncio task runs on that loop) rather than in the loop's own
  // bookkeeping, where it would lose the requests just taken (_gilgamesh_asgi.may_interrupt).
  // Attached to the loop's interpreter; true when it cannot tell.
  static bool may_interrupt(unsigned long thread_id);
  // Raises `exception` (HandlerTimeout of the loop's interpreter) in loop thread
  // `thread_id` if may_interrupt() says so; true once set. Attached as above.
  static bool interrupt_task(unsigned long thread_id, PyObject* exception);
  // Whether the loop is stuck: a request is still unanswered well past its
  // deadline although it was interrupted as often as it will be (a handler
  // blocked in C, or one that swallows HandlerTimeout). Never blocks on Python.
  bool stuck(Clock::time_point now) const;
  // Takes no more requests, lets those it holds finish (each is bounded by its
  // deadline; an open WebSocket by --graceful-timeout, then it is closed with
  // 1001), runs the lifespan shutdown and joins the thread. No Python lock may
  // be held.
  void stop();

 private:
  struct Pending;
  struct Inbox;
  class Mailbox;

  void thread_main();
  bool run_python(PyObject* asgi_module);
  void started(std::string error);
  Pending* find(std::uint64_t rid);
  // The loop holds `job` from now on: its rid.
  std::uint64_t hold(Job& job);
  // On the loop's thread, no Python lock held: jobs from the source, as many as
  // there is room for. None and `park`: the loop is rung when one comes.
  void pull(std::vector<Job>& out, bool park);
  void unpark();
  // Answers `rid` now and frees its place (a route call that failed to start).
  void answer_now(std::uint64_t rid, HttpResponseData&& response);
  // Lets `p` go (no Python lock held): its place is free.
  void release(std::unique_ptr<Pending> p);

  PyInterpreterState* const interp_;
  PythonApp& app_;
  PyObject* const asgi_;  // the ASGI callable (borrowed), or null: route calls
  const std::string target_;
  const std::size_t limit_;
  const std::string lifespan_;
  const std::string root_path_;
  const char* const loop_kind_;  // "uvloop" (a worker process's, --loop) or "asyncio"
  const double graceful_timeout_;  // s an open WebSocket keeps a stopping loop
  const Hooks hooks_;
  std::shared_ptr<Inbox> inbox_;  // shared with the streams' room callbacks
  std::thread thread_;
  PyObject* request_type_ = nullptr;  // _gilgamesh_asgi.Request; the loop's thread only

  mutable std::mutex mutex_;  // guards what follows
  std::condition_variable changed_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Pending>> pending_;
  std::uint64_t next_rid_ = 0;
  std::mutex source_mutex_;         // held while a pull runs; guards source_
  JobSource* source_ = nullptr;
  bool start_reported_ = false;
  std::string start_error_;
  Clock::time_point next_client_check_{};
  Clock::time_point last_interrupt_{};
};

}  // namespace gilgamesh

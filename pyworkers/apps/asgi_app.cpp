#include "pyworkers/apps/asgi_app.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/core/string.hpp>
#include <climits>

#include "pyworkers/embedding/app_threads.hpp"
#include "server/model/file_body.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

using namespace std::chrono_literals;

namespace {

// How late past its deadline a request may still be on the loop before the loop
// counts as blocked (it cancels the request's task at the deadline itself), how
// often a blocked loop is interrupted again, and how often clients are looked at.
constexpr auto kBlockedAfter = 500ms;
constexpr auto kInterruptEvery = 200ms;
constexpr auto kClientCheckEvery = 250ms;
// Interrupts one overdue request may cause: an app that swallows them (or its
// cancellation) is not interrupted without end, wherever its loop happens to be.
constexpr unsigned kMaxInterrupts = 3;
// Past its deadline by this much, after every interrupt, a request means the loop is stuck.
constexpr auto kStuckAfter = 5s;
constexpr const char* kCapsuleName = "gilgamesh.asgi_loop";

py::Ref bytes_of(std::string_view s) {
  return py::Ref::steal(PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
}

py::Ref str_of(std::string_view s) {
  return py::Ref::steal(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
}

// (host, port), or None where there is no address: a UNIX socket's peer and end (--uds), as
// uvicorn gives them.
py::Ref host_port(const std::string& host, std::uint16_t port) {
  if (host.empty()) return py::Ref::borrow(Py_None);
  py::Ref h = str_of(host);
  if (!h) return {};
  return py::Ref::steal(Py_BuildValue("(Oi)", h.get(), static_cast<int>(port)));
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// A status and [(name, value)] of bytes (the Python half checked the types) as a head.
bool head_from(PyObject* status, PyObject* headers, HttpResponseData& out) {
  const long code = PyLong_AsLong(status);
  if (code == -1 && PyErr_Occurred()) return false;
  out.status = static_cast<int>(code < 0 || code > 100000 ? 0 : code);
  py::Ref seq = py::Ref::steal(PySequence_Fast(headers, "the headers must be a sequence"));
  if (!seq) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.get());
  out.headers.reserve(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* pair = PySequence_Fast_GET_ITEM(seq.get(), i);
    PyObject* name = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 ? PyTuple_GET_ITEM(pair, 0) : nullptr;
    PyObject* value = name ? PyTuple_GET_ITEM(pair, 1) : nullptr;
    if (!name || !PyBytes_Check(name) || !PyBytes_Check(value)) {
      PyErr_SetString(PyExc_TypeError, "a response header must be a (bytes, bytes) tuple");
      return false;
    }
    out.headers.push_back({std::string(PyBytes_AS_STRING(name), static_cast<std::size_t>(PyBytes_GET_SIZE(name))),
                           std::string(PyBytes_AS_STRING(value), static_cast<std::size_t>(PyBytes_GET_SIZE(value)))});
  }
  return true;
}

std::uint64_t rid_of(PyObject* o) { return PyLong_AsUnsignedLongLong(o); }

}  // namespace

// --- AsgiApp ---------------------------------------------------------------------------------

std::unique_ptr<AsgiApp> AsgiApp::create(const AppOptions& options, PyObject* module, ErrorTypes errors) {
  std::unique_ptr<AsgiApp> a(new AsgiApp(options, std::move(errors)));
  a->routes_.push_back({"*", {}, "ASGI application " + options.target});
  const std::string expression = options.target.substr(options.target.find(':') + 1);
  py::Ref adapter = py::Ref::steal(PyImport_ImportModule("_gilgamesh_asgi"));
  if (!adapter) return nullptr;
  a->app_ = py::Ref::steal(PyObject_CallMethod(adapter.get(), "resolve", "Os", module, expression.c_str()));
  if (!a->app_) return nullptr;
  return a;
}

AsgiApp::~AsgiApp() {
  // Without the GIL references can only be dropped on the floor; release() must have run.
  (void)app_.release();
}

std::optional<HttpResponseData> AsgiApp::respond(std::size_t, const HttpRequestData&, StreamWriter&) {
  PyErr_SetString(PyExc_RuntimeError, "an ASGI app is served by its worker's event loop");
  return std::nullopt;
}


// --- the loop's inbox ------------------------------------------------------------------------

// What the server tells the loop, in order; the eventfd rings when the inbox
// turns non-empty. Shared with the room callbacks of the streams, which may
// outlive the loop.
struct AsgiLoop::Inbox {
  enum class Kind { request, room, gone, stop, ws_message, ws_closed };
  struct Event {
    Kind kind;
    std::uint64_t rid;
    WebSocketChannel::Event ws;  // ws_message, ws_closed
  };

  Inbox() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd < 0) throw StartupError(StartupError::Kind::worker, "eventfd failed for an ASGI worker's loop");
  }
  ~Inbox() { ::close(fd); }

  void post(Kind kind, std::uint64_t rid = 0, WebSocketChannel::Event&& ws = {}) {
    bool wake;
    {
      std::lock_guard lock(mutex);
      events.push_back({kind, rid, std::move(ws)});
      wake = !reading && !std::exchange(rung, true);
    }
    if (wake) ring();
  }
  // The loop's thread is about to run Hooks::read: what is posted until its
  // take() right after (the read's requests, and what the frames it read said)
  // goes out with that take, without a ring.
  void begin_read() {
    std::lock_guard lock(mutex);
    reading = true;
  }
  // Wakes the loop without an event (the pool's queue has a job for it). Never blocks.
  void ring() const {
    const std::uint64_t one = 1;
    (void)!::write(fd, &one, sizeof one);
  }
  std::vector<Event> take() {
    std::lock_guard lock(mutex);
    rung = false;
    reading = false;
    return std::exchange(events, {});
  }

  const int fd;
  std::mutex mutex;
  std::vector<Event> events;
  bool rung = false;
  bool reading = false;  // begin_read() until take()
};

// A request the loop holds, from submit() to the loop's done().
struct AsgiLoop::Pending {
  Job job;
  std::shared_ptr<BodyStream> stream;  // the producer's end, while a streamed body is open
  bool answered = false;               // the head went out (or the 504 is the connection's)
  bool gone_told = false;              // the loop was told the client left
  unsigned interrupts = 0;             // the loop was interrupted for it, overdue
};

AsgiLoop::Pending* AsgiLoop::find(std::uint64_t rid) {
  std::lock_guard lock(mutex_);
  auto it = pending_.find(rid);
  return it == pending_.end() ? nullptr : it->second.get();
}

// --- the mailbox: what the Python half calls, on the loop's thread, with its GIL ---------------

class AsgiLoop::Mailbox {
 public:
  static PyObject* make(AsgiLoop* loop, PyObject* module);

 private:
  static AsgiLoop* loop_of(PyObject* capsule) {
    return static_cast<AsgiLoop*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  }
  // The request behind `rid`, or nullptr (it was done already).
  static Pending* pending(PyObject* capsule, PyObject* rid, AsgiLoop** loop = nullptr) {
    AsgiLoop* l = loop_of(capsule);
    if (loop) *loop = l;
    const std::uint64_t id = rid_of(rid);
    if (PyErr_Occurred()) return nullptr;
    return l ? l->find(id) : nullptr;
  }
  static void mark_answered(AsgiLoop* loop, Pending* p) {
    std::lock_guard lock(loop->mutex_);
    p->answered = true;
  }
  // The answer is the loop's last word on `p`: no deadline or client check applies
  // any more, and it goes to the connection. False: the connection is gone.
  static bool answer(AsgiLoop* loop, Pending* p, HttpResponseData&& response) {
    mark_answered(loop, p);
    return complete(p, std::move(response));
  }
  // Hands `response` to the connection, the GIL released (the connection's side
  // takes locks of its own). False: the connection is gone.
  static bool complete(Pending* p, HttpResponseData&& response) {
    bool delivered;
    Py_BEGIN_ALLOW_THREADS
    delivered = p->job.complete(std::move(response));
    Py_END_ALLOW_THREADS
    return delivered;
  }
  // The head as the app gave it, or (logged) the 500 of a head that breaks a rule.
  static bool checked(AsgiLoop* loop, Pending* p, HttpResponseData& head) {
    const std::string why = response_violation(head);
    if (why.empty()) return true;
    spdlog::error("request {}: ASGI app {} sent a response that breaks a rule: {}; answered 500",
                  p->job.request.request_id, loop->target_, why);
    head = make_error_response(500, "internal server error", p->job.request.request_id);
    return false;
  }

  static PyObject* take(PyObject* self, PyObject*);
  static PyObject* respond(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* open(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* push(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* finish(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* sendfile(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* fail(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* cut(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* timed_out(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* left(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* done(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* result(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* error(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* ws_accept(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* ws_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* ws_more(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* ws_close(PyObject* self, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* pull(PyObject* self, PyObject* park);
  static PyObject* unpark(PyObject* self, PyObject*);
  static PyObject* read(PyObject* self, PyObject*);
  static PyObject* idle(PyObject* self, PyObject*);
  static py::Ref request_object(AsgiLoop* loop, const HttpRequestData& r);
  static bool append_request(AsgiLoop* loop, std::uint64_t rid, Clock::time_point now, PyObject* events);
};

// The event that starts request `rid`, appended to `events`: ("request" |
// "ws_connect", rid, Request, seconds_left), or a route handler's ("call", rid,
// coroutine, seconds_left). False with a Python exception set.
bool AsgiLoop::Mailbox::append_request(AsgiLoop* loop, std::uint64_t rid, Clock::time_point now,
                                       PyObject* events) {
  Pending* p = loop->find(rid);
  if (!p) return true;
  const double left = std::chrono::duration<double>(p->job.deadline - now).count();
  py::Ref item;
  if (loop->asgi_ == nullptr) {  // an `async def` route handler: its coroutine
    py::Ref call = loop->app_.start_call(p->job.route_index, p->job.request);
    if (!call) {
      loop->answer_now(rid, loop->app_.error_answer(p->job.route_index, p->job.request));
      return true;
    }
    item = py::Ref::steal(Py_BuildValue("(sKOd)", "call", static_cast<unsigned long long>(rid), call.get(), left));
  } else {
    py::Ref request = request_object(loop, p->job.request);
    if (!request) return false;
    item = py::Ref::steal(Py_BuildValue("(sKOd)", p->job.websocket ? "ws_connect" : "request",
                                        static_cast<unsigned long long>(rid), request.get(), left));
  }
  return item && PyList_Append(events, item.get()) == 0;
}

// pull(park) -> the "request" / "ws_connect" events of the jobs the loop took from
// the pool's queue (a loop that pulls), or None. None and `park`: the doorbell
// rings when a job comes (until the next pull() or unpark()).
PyObject* AsgiLoop::Mailbox::pull(PyObject* self, PyObject* park) {
  AsgiLoop* loop = loop_of(self);
  if (!loop) return nullptr;
  const bool may_park = park == Py_True;
  std::vector<Job> jobs;
  Py_BEGIN_ALLOW_THREADS
  loop->pull(jobs, may_park);
  Py_END_ALLOW_THREADS
  if (jobs.empty()) Py_RETURN_NONE;
  std::vector<std::uint64_t> rids;
  rids.reserve(jobs.size());
  for (Job& job : jobs) rids.push_back(loop->hold(job));
  py::Ref out = py::Ref::steal(PyList_New(0));
  if (!out) return nullptr;
  const auto now = Clock::now();
  for (std::uint64_t rid : rids) {
    if (!append_request(loop, rid, now, out.get())) return nullptr;
  }
  return out.release();
}

// read() -> (events, more): what Hooks::read took from the loop's socket, as
// take() gives it (its requests, and what the frames it read said about the
// requests the loop holds), and whether the loop should go on watching the socket.
PyObject* AsgiLoop::Mailbox::read(PyObject* self, PyObject*) {
  AsgiLoop* loop = loop_of(self);
  if (!loop) return nullptr;
  bool more = false;
  if (loop->hooks_.read) {
    loop->inbox_->begin_read();
    Py_BEGIN_ALLOW_THREADS
    more = loop->hooks_.read();
    Py_END_ALLOW_THREADS
  }
  py::Ref events = py::Ref::steal(take(self, nullptr));
  if (!events) return nullptr;
  return Py_BuildValue("(OO)", events.get(), more ? Py_True : Py_False);
}

// idle(): the loop is about to wait (Hooks::idle).
PyObject* AsgiLoop::Mailbox::idle(PyObject* self, PyObject*) {
  AsgiLoop* loop = loop_of(self);
  if (!loop) return nullptr;
  if (loop->hooks_.idle) {
    Py_BEGIN_ALLOW_THREADS
    loop->hooks_.idle();
    Py_END_ALLOW_THREADS
  }
  Py_RETURN_NONE;
}

// unpark(): the loop is awake (it pulls before it next waits): a job that comes
// meanwhile rings another loop.
PyObject* AsgiLoop::Mailbox::unpark(PyObject* self, PyObject*) {
  AsgiLoop* loop = loop_of(self);
  if (!loop) return nullptr;
  loop->unpark();
  Py_RETURN_NONE;
}

py::Ref AsgiLoop::Mailbox::request_object(AsgiLoop* loop, const HttpRequestData& r) {
  const std::string_view target(r.target);
  const std::string_view raw_path = target.substr(0, target.find('?'));
  py::Ref headers = py::Ref::steal(PyList_New(static_cast<Py_ssize_t>(r.headers.size())));
  if (!headers) return {};
  for (std::size_t i = 0; i < r.headers.size(); ++i) {
    PyObject* pair = Py_BuildValue("(y#y#)", lower(r.headers[i].name).c_str(),
                                   static_cast<Py_ssize_t>(r.headers[i].name.size()), r.headers[i].value.data(),
                                   static_cast<Py_ssize_t>(r.headers[i].value.size()));
    if (!pair) return {};
    PyList_SET_ITEM(headers.get(), static_cast<Py_ssize_t>(i), pair);
  }
  const std::string_view version = r.http_version == "HTTP/1.0" ? "1.0" : "1.1";
  py::Ref method = str_of(r.method), path = str_of(r.path), raw = bytes_of(raw_path),
          query = bytes_of(r.query_string), body = bytes_of(r.body), http_version = str_of(version),
          client = host_port(r.remote_addr, r.remote_port), server = host_port(r.server_addr, r.server_port),
          request_id = str_of(r.request_id), scheme = str_of(r.scheme);
  if (!method || !path || !raw || !query || !body || !http_version || !client || !server || !request_id ||
      !scheme) {
    return {};
  }
  return py::Ref::steal(PyObject_CallFunctionObjArgs(loop->request_type_, method.get(), path.get(), raw.get(),
                                                     query.get(), headers.get(), body.get(), http_version.get(),
                                                     client.get(), server.get(), request_id.get(), scheme.get(),
                                                     nullptr));
}

// take() -> [("request" | "ws_connect", rid, Request, seconds_left) | ("room", rid) | ("gone", rid)
//           | ("ws_message", rid, is_text, data) | ("ws_closed", rid, code, reason) | ("stop",)]
PyObject* AsgiLoop::Mailbox::take(PyObject* self, PyObject*) {
  AsgiLoop* loop = loop_of(self);
  if (!loop) return nullptr;
  const std::vector<Inbox::Event> events = loop->inbox_->take();
  py::Ref out = py::Ref::steal(PyList_New(0));
  if (!out) return nullptr;
  const auto now = Clock::now();
  for (const Inbox::Event& e : events) {
    py::Ref item;
    switch (e.kind) {
      case Inbox::Kind::request:
        if (!append_request(loop, e.rid, now, out.get())) return nullptr;
        continue;
      case Inbox::Kind::ws_message: {
        py::Ref data = bytes_of(e.ws.message.data);
        if (!data) return nullptr;
        item = py::Ref::steal(Py_BuildValue("(sKOO)", "ws_message", static_cast<unsigned long long>(e.rid),
                                            e.ws.message.text ? Py_True : Py_False, data.get()));
        break;
      }
      case Inbox::Kind::ws_closed: {
        py::Ref reason = str_of(e.ws.reason);
        if (!reason) return nullptr;
        item = py::Ref::steal(Py_BuildValue("(sKiO)", "ws_closed", static_cast<unsigned long long>(e.rid),
                                            e.ws.code, reason.get()));
        break;
      }
      case Inbox::Kind::room:
        item = py::Ref::steal(Py_BuildValue("(sK)", "room", static_cast<unsigned long long>(e.rid)));
        break;
      case Inbox::Kind::gone:
        item = py::Ref::steal(Py_BuildValue("(sK)", "gone", static_cast<unsigned long long>(e.rid)));
        break;
      case Inbox::Kind::stop:
        item = py::Ref::steal(Py_BuildValue("(s)", "stop"));
        break;
    }
    if (!item || PyList_Append(out.get(), item.get()) < 0) return nullptr;
  }
  return out.release();
}

// respond(rid, status, headers, body) -> bool: a whole answer, in one hand-off.
PyObject* AsgiLoop::Mailbox::respond(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyBytes_Check(args[3])) return PyErr_Format(PyExc_TypeError, "respond(rid, status, headers, body)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_False);
  HttpResponseData response;
  if (!head_from(args[1], args[2], response)) return nullptr;
  response.body.assign(PyBytes_AS_STRING(args[3]), static_cast<std::size_t>(PyBytes_GET_SIZE(args[3])));
  checked(loop, p, response);
  return PyBool_FromLong(answer(loop, p, std::move(response)));
}

// open(rid, status, headers) -> bool: the head of an answer whose body streams.
// False: the client is gone, or the head broke a rule (answered 500).
PyObject* AsgiLoop::Mailbox::open(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "open(rid, status, headers)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_False);
  HttpResponseData head;
  if (!head_from(args[1], args[2], head)) return nullptr;
  const bool valid = checked(loop, p, head);
  if (valid) {
    BodyStream::Ends ends = BodyStream::make();
    head.stream = std::move(ends.consumer);
    p->stream = std::move(ends.producer);
  }
  const bool delivered = answer(loop, p, std::move(head));
  return PyBool_FromLong(valid && delivered);
}

// push(rid, data) -> 0 taken | 1 taken, but wait for ("room", rid) | 2 the client is gone
PyObject* AsgiLoop::Mailbox::push(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyBytes_Check(args[1])) return PyErr_Format(PyExc_TypeError, "push(rid, bytes)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p || !p->stream) return PyErr_Occurred() ? nullptr : PyLong_FromLong(2);
  const std::uint64_t rid = rid_of(args[0]);
  std::weak_ptr<Inbox> inbox = loop->inbox_;
  const BodyStream::Offer offered = p->stream->offer(
      std::string(PyBytes_AS_STRING(args[1]), static_cast<std::size_t>(PyBytes_GET_SIZE(args[1]))),
      [inbox, rid] {
        if (auto in = inbox.lock()) in->post(Inbox::Kind::room, rid);
      });
  switch (offered) {
    case BodyStream::Offer::taken: return PyLong_FromLong(0);
    case BodyStream::Offer::full: return PyLong_FromLong(1);
    case BodyStream::Offer::cancelled: break;
  }
  return PyLong_FromLong(2);
}

// finish(rid, ok): the streamed body is whole, or broke off.
PyObject* AsgiLoop::Mailbox::finish(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) return PyErr_Format(PyExc_TypeError, "finish(rid, ok)");
  Pending* p = pending(self, args[0]);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  if (p->stream) {
    p->stream->finish(PyObject_IsTrue(args[1]) == 1);
    p->stream.reset();
  }
  Py_RETURN_NONE;
}

// sendfile(rid, status, headers, fd, size) -> bool: a whole answer whose body is the `size`
// bytes of the regular file `fd` (http.response.pathsend; the Python half opened it and
// checked the head's Content-Length against `size`, and closes its own descriptor): the head,
// with a Content-Length of `size` where the app gave none, and a copy of the descriptor go to
// the connection, which reads the file as the client takes it (file_body.hpp), on its thread
// (from a worker process, through Hooks::send_file). False: the connection is gone.
PyObject* AsgiLoop::Mailbox::sendfile(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 5) return PyErr_Format(PyExc_TypeError, "sendfile(rid, status, headers, fd, size)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_False);
  const long fd = PyLong_AsLong(args[3]);
  const unsigned long long size = PyLong_AsUnsignedLongLong(args[4]);
  if (PyErr_Occurred()) return nullptr;
  if (fd < 0 || fd > INT_MAX) return PyErr_Format(PyExc_ValueError, "sendfile(): %ld is not a descriptor", fd);
  HttpResponseData head;
  if (!head_from(args[1], args[2], head)) return nullptr;
  const bool has_length = std::any_of(head.headers.begin(), head.headers.end(),
                                      [](const Header& h) { return boost::beast::iequals(h.name, "Content-Length"); });
  if (!has_length) head.headers.push_back({"Content-Length", std::to_string(size)});
  if (!checked(loop, p, head)) return PyBool_FromLong(answer(loop, p, std::move(head)));
  Fd file(::fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 0));
  if (file.fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
  if (p->job.request.method == "HEAD") {
    BodyStream::Ends ends = BodyStream::make();  // no body goes out: nothing is read
    ends.producer->finish(true);
    head.stream = std::move(ends.consumer);
  } else if (loop->hooks_.send_file) {
    mark_answered(loop, p);
    bool delivered;
    Py_BEGIN_ALLOW_THREADS
    delivered = loop->hooks_.send_file(p->job, std::move(head), std::move(file), size);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(delivered);
  } else {
    Py_BEGIN_ALLOW_THREADS  // stream_file reads the first chunks here
    head.stream = stream_file(std::move(file), 0, size, [id = p->job.request.request_id](std::uint64_t at) {
      spdlog::error("request {}: the file the ASGI app sent (http.response.pathsend) ended or could not be read "
                    "at byte {}; the connection is closed with the body cut short",
                    id, at);
    });
    Py_END_ALLOW_THREADS
  }
  return PyBool_FromLong(answer(loop, p, std::move(head)));
}

// fail(rid, summary, traceback): the app raised or broke the protocol before
// anything was sent: logged with the request id, answered 500.
PyObject* AsgiLoop::Mailbox::fail(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "fail(rid, summary, traceback)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  const std::string summary = py::to_string(args[1]), traceback = py::to_string(args[2]);
  const std::string& id = p->job.request.request_id;
  spdlog::error("request {}: ASGI app {} raised {}\n{}", id, loop->target_, summary, traceback);
  HttpResponseData response = make_error_response(500, "internal server error", id);
  if (loop->app_.debug()) {
    response.body = nlohmann::json{{"error", "internal server error"}, {"request_id", id},
                                   {"exception", summary}, {"traceback", traceback}}
                        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  answer(loop, p, std::move(response));
  Py_RETURN_NONE;
}

// cut(rid, summary, traceback): the same after the head went out: logged, and
// the body ends without its last chunk (the connection closes).
PyObject* AsgiLoop::Mailbox::cut(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "cut(rid, summary, traceback)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  spdlog::error("request {}: ASGI app {} raised after the head was sent; the connection is closed with the "
                "body cut short: {}\n{}", p->job.request.request_id, loop->target_, py::to_string(args[1]),
                py::to_string(args[2]));
  if (p->stream) {
    p->stream->finish(false);
    p->stream.reset();
  }
  if (p->job.websocket) p->job.websocket->close(WebSocketChannel::kInternalError, "");
  Py_RETURN_NONE;
}

// left(rid, summary, traceback): the client left and the app stopped (returned, or
// raised: summary and traceback, else None). Nothing more goes out: a body that
// streams ends cut short; an unanswered request is answered 499, as the pool
// answers a queued one whose client left, so that the connection counts and logs
// no 500 nobody was sent. What the app raised on its way out is most likely how it
// learnt of the leaving (a send that raised): logged, but not as an error.
PyObject* AsgiLoop::Mailbox::left(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "left(rid, summary, traceback)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  const std::string& id = p->job.request.request_id;
  if (args[1] != Py_None) {
    spdlog::info("request {}: the client left; ASGI app {} then raised {}", id, loop->target_,
                 py::to_string(args[1]));
    if (args[2] != Py_None) spdlog::debug("{}", py::to_string(args[2]));
  }
  if (p->stream) {
    p->stream->finish(false);
    p->stream.reset();
  }
  bool answered;
  {
    std::lock_guard lock(loop->mutex_);
    answered = p->answered;
  }
  if (!answered) answer(loop, p, make_error_response(499, "the client closed the connection before the answer", id));
  Py_RETURN_NONE;
}

// timed_out(rid): cancelled at its deadline; the connection answers 504 itself.
PyObject* AsgiLoop::Mailbox::timed_out(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1) return PyErr_Format(PyExc_TypeError, "timed_out(rid)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  mark_answered(loop, p);
  Py_RETURN_NONE;
}

// result(rid, value): what an `async def` route handler returned, answered as a
// handler's return value is.
PyObject* AsgiLoop::Mailbox::result(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) return PyErr_Format(PyExc_TypeError, "result(rid, value)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  HttpResponseData response = loop->app_.finish_call(p->job.route_index, p->job.request, args[1]);
  answer(loop, p, std::move(response));
  Py_RETURN_NONE;
}

// error(rid, exception): what it raised instead (HTTPError's status, else a logged 500).
PyObject* AsgiLoop::Mailbox::error(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2 || !PyExceptionInstance_Check(args[1])) return PyErr_Format(PyExc_TypeError, "error(rid, exception)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  PyErr_SetRaisedException(Py_NewRef(args[1]));
  HttpResponseData response = loop->app_.error_answer(p->job.route_index, p->job.request);
  answer(loop, p, std::move(response));
  Py_RETURN_NONE;
}

// ws_accept(rid, subprotocol, headers) -> bool: the app accepted the WebSocket; its
// answer is the handshake's 101 with the app's headers (and the subprotocol). False:
// the client is gone, or the headers break a rule (logged; the handshake fails).
PyObject* AsgiLoop::Mailbox::ws_accept(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "ws_accept(rid, subprotocol, headers)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p || !p->job.websocket) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_False);
  HttpResponseData answer101;
  py::Ref status = py::Ref::steal(PyLong_FromLong(200));  // checked as a 200; sent as the 101
  if (!status || !head_from(status.get(), args[2], answer101)) return nullptr;
  if (args[1] != Py_None) answer101.headers.push_back({"Sec-WebSocket-Protocol", py::to_string(args[1])});
  if (!checked(loop, p, answer101)) {
    answer(loop, p, std::move(answer101));  // the 500
    return Py_NewRef(Py_False);
  }
  answer101.status = 101;
  return PyBool_FromLong(answer(loop, p, std::move(answer101)));
}

// ws_send(rid, is_text, data) -> 0 taken | 1 taken, but wait for ("room", rid) | 2 closed
PyObject* AsgiLoop::Mailbox::ws_send(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyBytes_Check(args[2])) return PyErr_Format(PyExc_TypeError, "ws_send(rid, is_text, bytes)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p || !p->job.websocket) return PyErr_Occurred() ? nullptr : PyLong_FromLong(2);
  const std::uint64_t rid = rid_of(args[0]);
  std::weak_ptr<Inbox> inbox = loop->inbox_;
  WebSocketChannel::Message m{PyObject_IsTrue(args[1]) == 1,
                              std::string(PyBytes_AS_STRING(args[2]), static_cast<std::size_t>(PyBytes_GET_SIZE(args[2])))};
  switch (p->job.websocket->send(std::move(m), [inbox, rid] {
    if (auto in = inbox.lock()) in->post(Inbox::Kind::room, rid);
  })) {
    case WebSocketChannel::Offer::taken: return PyLong_FromLong(0);
    case WebSocketChannel::Offer::full: return PyLong_FromLong(1);
    case WebSocketChannel::Offer::closed: break;
  }
  return PyLong_FromLong(2);
}

// ws_more(rid): the connection may read the client's next message.
PyObject* AsgiLoop::Mailbox::ws_more(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1) return PyErr_Format(PyExc_TypeError, "ws_more(rid)");
  Pending* p = pending(self, args[0]);
  if (p && p->job.websocket) p->job.websocket->more();
  return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
}

// ws_close(rid, code, reason): before ws_accept the handshake is refused (403); after
// it, the close handshake with the app's code and reason.
PyObject* AsgiLoop::Mailbox::ws_close(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "ws_close(rid, code, reason)");
  AsgiLoop* loop = nullptr;
  Pending* p = pending(self, args[0], &loop);
  if (!p || !p->job.websocket) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  bool accepted;
  {
    std::lock_guard lock(loop->mutex_);
    accepted = p->answered;
  }
  if (!accepted) {
    answer(loop, p, make_error_response(403, "the app refused the WebSocket handshake", p->job.request.request_id));
    Py_RETURN_NONE;
  }
  const long code = PyLong_AsLong(args[1]);
  if (code == -1 && PyErr_Occurred()) return nullptr;
  p->job.websocket->close(static_cast<int>(code), py::to_string(args[2]));
  Py_RETURN_NONE;
}

// done(rid): the request's task has ended; its place on the loop is free.
PyObject* AsgiLoop::Mailbox::done(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1) return PyErr_Format(PyExc_TypeError, "done(rid)");
  AsgiLoop* loop = loop_of(self);
  if (!loop) return nullptr;
  const std::uint64_t rid = rid_of(args[0]);
  if (PyErr_Occurred()) return nullptr;
  std::unique_ptr<Pending> p;
  {
    std::lock_guard lock(loop->mutex_);
    auto it = loop->pending_.find(rid);
    if (it == loop->pending_.end()) Py_RETURN_NONE;
    p = std::move(it->second);
    loop->pending_.erase(it);
  }
  loop->changed_.notify_all();
  Py_BEGIN_ALLOW_THREADS
  if (p->stream) p->stream->finish(false);  // never said how it ended: cut, not whole
  if (p->job.websocket) p->job.websocket->close(1000, "");  // the app is over: so is its socket
  if (!p->answered) {
    p->job.complete(make_error_response(500, "the ASGI app ended without an answer", p->job.request.request_id));
  }
  loop->release(std::move(p));  // a Job's destructor takes no Python lock, but may take the connection's
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* AsgiLoop::Mailbox::make(AsgiLoop* loop, PyObject* module) {
  static PyMethodDef defs[] = {
      {"take", reinterpret_cast<PyCFunction>(&take), METH_NOARGS, nullptr},
      {"pull", reinterpret_cast<PyCFunction>(&pull), METH_O, nullptr},
      {"unpark", reinterpret_cast<PyCFunction>(&unpark), METH_NOARGS, nullptr},
      {"read", reinterpret_cast<PyCFunction>(&read), METH_NOARGS, nullptr},
      {"idle", reinterpret_cast<PyCFunction>(&idle), METH_NOARGS, nullptr},
      {"respond", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&respond)), METH_FASTCALL, nullptr},
      {"open", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&open)), METH_FASTCALL, nullptr},
      {"push", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&push)), METH_FASTCALL, nullptr},
      {"finish", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&finish)), METH_FASTCALL, nullptr},
      {"sendfile", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&sendfile)), METH_FASTCALL,
       nullptr},
      {"fail", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fail)), METH_FASTCALL, nullptr},
      {"cut", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cut)), METH_FASTCALL, nullptr},
      {"timed_out", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&timed_out)), METH_FASTCALL,
       nullptr},
      {"left", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&left)), METH_FASTCALL, nullptr},
      {"done", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&done)), METH_FASTCALL, nullptr},
      {"result", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&result)), METH_FASTCALL, nullptr},
      {"error", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&error)), METH_FASTCALL, nullptr},
      {"ws_accept", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ws_accept)), METH_FASTCALL,
       nullptr},
      {"ws_send", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ws_send)), METH_FASTCALL, nullptr},
      {"ws_more", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ws_more)), METH_FASTCALL, nullptr},
      {"ws_close", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&ws_close)), METH_FASTCALL,
       nullptr},
  };
  py::Ref capsule = py::Ref::steal(PyCapsule_New(loop, kCapsuleName, nullptr));
  py::Ref kwargs = py::Ref::steal(PyDict_New());
  if (!capsule || !kwargs) return nullptr;
  for (PyMethodDef& def : defs) {
    py::Ref fn = py::Ref::steal(PyCFunction_New(&def, capsule.get()));
    if (!fn || PyDict_SetItemString(kwargs.get(), def.ml_name, fn.get()) < 0) return nullptr;
  }
  py::Ref factory = py::Ref::steal(PyObject_GetAttrString(module, "mailbox"));
  py::Ref no_args = py::Ref::steal(PyTuple_New(0));
  if (!factory || !no_args) return nullptr;
  return PyObject_Call(factory.get(), no_args.get(), kwargs.get());
}

// --- AsgiLoop --------------------------------------------------------------------------------

AsgiLoop::AsgiLoop(PyInterpreterState* interp, PythonApp& app, const ServerConfig& config, Hooks hooks)
    : interp_(interp),
      app_(app),
      asgi_(dynamic_cast<AsgiApp*>(&app) ? dynamic_cast<AsgiApp&>(app).callable() : nullptr),
      target_(config.app.target),
      limit_(static_cast<std::size_t>(std::max(1, config.pool.worker_connections))),
      lifespan_(asgi_ == nullptr || config.app.lifespan == Lifespan::off ? "off"
                : config.app.lifespan == Lifespan::on                  ? "on"
                                                                       : "auto"),
      root_path_(config.app.root_path),
      // A loop that pulls needs asyncio's selector (gilgamesh_asgi._PullingSelector).
      loop_kind_(config.app.loop == EventLoop::uvloop && !hooks.pulls ? "uvloop" : "asyncio"),
      graceful_timeout_(config.http.graceful_timeout),
      hooks_(std::move(hooks)),
      inbox_(std::make_shared<Inbox>()) {}

AsgiLoop::~AsgiLoop() { stop(); }

void AsgiLoop::start() {
  thread_ = std::thread([this] { thread_main(); });
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return start_reported_; });
  if (start_error_.empty()) return;
  const std::string error = start_error_;
  lock.unlock();
  thread_.join();
  throw StartupError("cannot start ASGI app '" + target_ + "': " + error);
}

void AsgiLoop::started(std::string error) {
  {
    std::lock_guard lock(mutex_);
    if (start_reported_) return;
    start_reported_ = true;
    start_error_ = std::move(error);
  }
  changed_.notify_all();
}

void AsgiLoop::thread_main() {
  PyThreadState* ts = PyThreadState_New(interp_);
  PyEval_RestoreThread(ts);
  adopt_server_thread();  // threads the app starts from the loop (run_in_executor) are waited for
  if (hooks_.entered) hooks_.entered();
  {
    py::Ref module = py::Ref::steal(PyImport_ImportModule("_gilgamesh_asgi"));
    if (!module || !run_python(module.get())) {
      started("the ASGI adapter failed: " + py::fetch_error_summary());
    }
    Py_CLEAR(request_type_);
  }
  PyEval_SaveThread();
  if (hooks_.leaving) hooks_.leaving();
  PyEval_RestoreThread(ts);
  PyThreadState_Clear(ts);
  PyThreadState_DeleteCurrent();
  // What the loop left unanswered (it failed to start, or its Python broke).
  std::unordered_map<std::uint64_t, std::unique_ptr<Pending>> left;
  {
    std::lock_guard lock(mutex_);
    left.swap(pending_);
  }
  changed_.notify_all();
  for (auto& [rid, p] : left) {
    if (p->stream) p->stream->finish(false);
    if (p->job.websocket) p->job.websocket->close(WebSocketChannel::kInternalError, "");
    if (!p->answered) {
      p->job.complete(make_error_response(503, "the worker's event loop has stopped", p->job.request.request_id));
    }
    release(std::move(p));
  }
}

// With the loop thread's GIL. False with a Python exception set when the adapter
// itself broke; the app's own failures are reported through started().
bool AsgiLoop::run_python(PyObject* module) {
  request_type_ = PyObject_GetAttrString(module, "Request");
  py::Ref worker_type = py::Ref::steal(PyObject_GetAttrString(module, "Worker"));
  if (!request_type_ || !worker_type) return false;
  py::Ref mailbox = py::Ref::steal(Mailbox::make(this, module));
  if (!mailbox) return false;
  py::Ref worker = py::Ref::steal(PyObject_CallFunction(worker_type.get(), "OOssOOOs", asgi_ ? asgi_ : Py_None,
                                                        mailbox.get(), lifespan_.c_str(), root_path_.c_str(),
                                                        app_.handler_timeout_type(),
                                                        hooks_.pulls ? Py_True : Py_False,
                                                        hooks_.idle ? Py_True : Py_False, loop_kind_));
  if (!worker) return false;
  py::Ref problem = py::Ref::steal(PyObject_CallMethod(worker.get(), "startup", nullptr));
  if (!problem) {
    py::ErrorText error = py::fetch_error();
    spdlog::debug("{}", error.traceback);
    started("lifespan startup raised " + error.summary);
  } else if (problem.get() != Py_None) {
    started(py::to_string(problem.get()));
  }
  if (problem && problem.get() == Py_None) {
    started({});
    for (;;) {
      py::Ref served = py::Ref::steal(PyObject_CallMethod(worker.get(), "serve", "ii", inbox_->fd, hooks_.read_fd));
      if (served) break;
      // Raised out of the loop itself: a HandlerTimeout that hit the loop's own code
      // rather than a handler (the loop serves on), or a fault of the adapter.
      const bool timeout = PyErr_ExceptionMatches(app_.handler_timeout_type());
      py::ErrorText error = py::fetch_error();
      if (timeout) continue;
      spdlog::error("ASGI app {}: the event loop raised {}; it serves on\n{}", target_, error.summary,
                    error.traceback);
    }
    py::Ref shutdown = py::Ref::steal(PyObject_CallMethod(worker.get(), "shutdown", nullptr));
    if (!shutdown) {
      spdlog::error("ASGI app {}: lifespan shutdown raised {}", target_, py::fetch_error_summary());
    } else if (shutdown.get() != Py_None) {
      spdlog::error("ASGI app {}: {}", target_, py::to_string(shutdown.get()));
    }
  }
  py::Ref closed = py::Ref::steal(PyObject_CallMethod(worker.get(), "close", nullptr));
  if (!closed) PyErr_Clear();
  return true;
}

void AsgiLoop::answer_now(std::uint64_t rid, HttpResponseData&& response) {
  std::unique_ptr<Pending> p;
  {
    std::lock_guard lock(mutex_);
    auto it = pending_.find(rid);
    if (it == pending_.end()) return;
    p = std::move(it->second);
    pending_.erase(it);
  }
  changed_.notify_all();
  Py_BEGIN_ALLOW_THREADS
  p->job.complete(std::move(response));
  release(std::move(p));
  Py_END_ALLOW_THREADS
}

void AsgiLoop::release(std::unique_ptr<Pending> p) {
  if (hooks_.released) hooks_.released(p->job);
  p.reset();
}

std::uint64_t AsgiLoop::hold(Job& job) {
  auto p = std::make_unique<Pending>();
  p->job = std::move(job);
  p->job.sink = nullptr;
  std::uint64_t rid;
  std::shared_ptr<WebSocketChannel> websocket = asgi_ ? p->job.websocket : nullptr;
  if (!asgi_) p->job.websocket.reset();  // a route app's `async def` handlers speak plain HTTP
  {
    std::lock_guard lock(mutex_);
    rid = ++next_rid_;
    pending_.emplace(rid, std::move(p));
  }
  if (websocket) {  // what its connection says comes to this loop's inbox
    websocket->attach_loop([inbox = std::weak_ptr<Inbox>(inbox_), rid](WebSocketChannel::Event&& e) {
      if (auto in = inbox.lock()) in->post(e.ended ? Inbox::Kind::ws_closed : Inbox::Kind::ws_message, rid, std::move(e));
    });
  }
  return rid;
}

void AsgiLoop::submit(Job& job) { inbox_->post(Inbox::Kind::request, hold(job)); }

void AsgiLoop::ring() { inbox_->ring(); }

void AsgiLoop::pull_from(JobSource* source) {
  {
    std::lock_guard lock(source_mutex_);
    source_ = source;
  }
  if (source) ring();  // what is queued already
}

void AsgiLoop::pull(std::vector<Job>& out, bool park) {
  std::lock_guard lock(source_mutex_);
  if (!source_) return;
  std::size_t room;
  {
    std::lock_guard held(mutex_);
    room = pending_.size() < limit_ ? limit_ - pending_.size() : 0;
  }
  if (room == 0) {  // full: the loop looks again once a request is done (on its own thread)
    source_->unpark();
    return;
  }
  source_->pull(out, room, park);
}

void AsgiLoop::unpark() {
  std::lock_guard lock(source_mutex_);
  if (source_) source_->unpark();
}

bool AsgiLoop::wait_for_room(Clock::time_point until) {
  std::unique_lock lock(mutex_);
  return changed_.wait_until(lock, until, [&] { return pending_.size() < limit_; });
}

std::size_t AsgiLoop::in_flight() const {
  std::lock_guard lock(mutex_);
  return pending_.size();
}

bool AsgiLoop::supervise(Clock::time_point now) {
  std::vector<std::uint64_t> gone;
  std::vector<Pending*> overdue;
  bool blocked = false;
  {
    std::lock_guard lock(mutex_);
    const bool look_at_clients = now >= next_client_check_;
    if (look_at_clients) next_client_check_ = now + kClientCheckEvery;
    for (auto& [rid, p] : pending_) {
      if (p->answered) continue;
      if (now > p->job.deadline + kBlockedAfter && p->interrupts < kMaxInterrupts) overdue.push_back(p.get());
      if (look_at_clients && !p->gone_told && p->job.client_gone()) {
        p->gone_told = true;
        gone.push_back(rid);
      }
    }
    if (!overdue.empty() && now >= last_interrupt_ + kInterruptEvery) {
      blocked = true;
      last_interrupt_ = now;
      for (Pending* p : overdue) ++p->interrupts;
    }
  }
  for (std::uint64_t rid : gone) inbox_->post(Inbox::Kind::gone, rid);
  return blocked;
}

bool AsgiLoop::may_interrupt(unsigned long thread_id) {
  py::Ref adapter = py::Ref::steal(PyImport_ImportModule("_gilgamesh_asgi"));
  py::Ref answer = adapter ? py::Ref::steal(PyObject_CallMethod(adapter.get(), "may_interrupt", "k", thread_id))
                           : py::Ref();
  const int yes = answer ? PyObject_IsTrue(answer.get()) : -1;
  if (yes < 0) {
    spdlog::warn("cannot tell where the ASGI loop is before interrupting it: {}", py::fetch_error_summary());
    return true;
  }
  return yes == 1;
}

bool AsgiLoop::interrupt_task(unsigned long thread_id, PyObject* exception) {
  if (!may_interrupt(thread_id)) {
    spdlog::debug("the ASGI event loop is between tasks: not interrupted");
    return false;
  }
  return PyThreadState_SetAsyncExc(thread_id, exception) > 0;
}

bool AsgiLoop::stuck(Clock::time_point now) const {
  std::lock_guard lock(mutex_);
  for (const auto& [rid, p] : pending_) {
    if (!p->answered && p->interrupts >= kMaxInterrupts && now > p->job.deadline + kStuckAfter) return true;
  }
  return false;
}

void AsgiLoop::stop() {
  if (!thread_.joinable()) return;
  inbox_->post(Inbox::Kind::stop);
  // A request ends by its deadline; an accepted WebSocket only when one side closes it:
  // open ones get until --graceful-timeout (a recycled worker's clients are not cut at
  // once), then the close handshake with 1001, going away.
  const auto open_websocket = [this] {
    for (const auto& [rid, p] : pending_) {
      if (p->job.websocket && p->answered) return true;
    }
    return false;
  };
  std::vector<std::pair<std::uint64_t, std::shared_ptr<WebSocketChannel>>> left;
  {
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, Clock::now() + seconds_setting(graceful_timeout_),
                        [&] { return !open_websocket(); });
    for (const auto& [rid, p] : pending_) {
      if (p->job.websocket && p->answered) left.emplace_back(rid, p->job.websocket);
    }
  }
  for (auto& [rid, websocket] : left) {
    websocket->close(WebSocketChannel::kGoingAway, "");
    // The app hears it now, not after the client's answer to the close frame (as on SIGTERM).
    WebSocketChannel::Event e;
    e.ended = true;
    e.code = WebSocketChannel::kGoingAway;
    inbox_->post(Inbox::Kind::ws_closed, rid, std::move(e));
  }
  thread_.join();
}

}  // namespace gilgamesh

// The App seam: the user's app as loaded in one interpreter, behind one small
// interface that every strategy's worker calls. Each kind of app is one
// implementation in its own file:
//   route_app.cpp   @gilgamesh.route handlers (gilgamesh_api.py is its Python half)
//   wsgi_app.cpp    a PEP 3333 application (gilgamesh_wsgi.py is its Python half)
// Loading (sys.path, .pth files, the import, its diagnostics) is loader.cpp's,
// once for every kind. Nothing here outlives, or is shared with, another
// interpreter.
#pragma once

#include "pyworkers/embedding/py_ref.hpp"
#include "server/model/body_stream.hpp"
#include "server/model/executor.hpp"
#include "server/model/file_body.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gilgamesh {

// Where the app is loaded, beside what the user asked for (AppOptions).
struct LoadContext {
  Strategy strategy = Strategy::subinterpreters;  // named in error messages
  bool multithread = false;   // wsgi.multithread: other threads call the same app object
  bool multiprocess = false;  // wsgi.multiprocess: other workers run their own copy
  int trace_imports_fd = -1;  // the start-up probe: each import begun is written here
};

// A worker's context under `config`. shares_app_object: every worker calls the
// one app object (the strategy's traits say so); otherwise each has its own copy.
LoadContext load_context(const ServerConfig& config, bool shares_app_object);

// For a message saying that sub-interpreters refused (or failed) the app's import: the
// strategies that load such an app ("--strategy processes or --strategy threads"), and what
// is known of a module `text` names (pydantic-core refuses sub-interpreters by design), or nothing.
std::string strategies_instead();
std::string known_refusal_hint(std::string_view text);

// The exception types of the `gilgamesh` module that decide an answer, and
// whether error bodies carry the traceback (--debug). Shared by every kind.
struct ErrorTypes {
  py::Ref http_error;       // gilgamesh.HTTPError: its status and message
  py::Ref handler_timeout;  // gilgamesh.HandlerTimeout: raised at the deadline
  bool debug = false;
};

// One answer whose body the app produces piece by piece (a WSGI iterable or
// write(), a route handler's generator), as the app kinds write it. With a
// sink, the head goes out with the first body bytes and each piece follows as
// it comes; without one (nowhere to stream to), the pieces are collected into
// one answer, capped by --max-response like any other. With the GIL held,
// except that push() releases it while the client is slow.
class StreamWriter {
 public:
  StreamWriter(ResponseSink* sink, std::size_t max_response) : sink_(sink), max_response_(max_response) {}

  // The head, before the first body bytes. False: stop producing, because the
  // client is gone or the head breaks a response rule (refused(): answered
  // with the clean 500 of a collected answer, nothing has been sent).
  bool start(HttpResponseData&& head);
  // A piece of the body. False: stop producing (the client is gone, or a
  // collected body passed --max-response).
  bool push(std::string_view piece);
  // The body is over: whole, or broken off by an exception (after the head,
  // the connection closes without ending the body).
  void finish(bool ok);
  // Whether send_file() may take a file now: the sink reads files itself, and nothing was
  // sent or collected yet.
  bool takes_files() const { return sink_ && sink_->takes_files() && !started_ && size_ == 0; }
  // Instead of start() and push(): the head, and as the body `length` bytes of the regular
  // file `fd` from `offset`, for the sink to send (ResponseSink::open_file); the head holds
  // the Content-Length. The GIL is released meanwhile. False, with nothing taken: the app's
  // body is sent as usual (takes_files() is false, or the head breaks a response rule, which
  // start() then answers with the rule's 500).
  bool send_file(HttpResponseData&& head, Fd&& fd, std::uint64_t offset, std::uint64_t length);
  bool finished() const { return finished_; }

  bool started() const { return started_; }
  bool streaming() const { return sink_ != nullptr; }
  bool refused() const { return refused_; }
  // The answer when nothing streamed: the head with the collected body.
  HttpResponseData& collected() { return head_; }
  std::size_t collected_size() const { return size_; }

 private:
  ResponseSink* sink_;
  const std::size_t max_response_;
  HttpResponseData head_;  // without a sink, and a refused head
  std::size_t size_ = 0;
  bool started_ = false;
  bool refused_ = false;
  bool finished_ = false;
};

// What is left of a real file an app answers with (a WSGI app's wsgi.file_wrapper, a route
// handler's open binary file): a copy of its descriptor, from its position (tell()) to its
// end. nullopt, with no Python exception left, when `filelike` is not a regular file with a
// fileno() and a tell(). With the GIL.
struct FileSpan {
  Fd fd;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};
std::optional<FileSpan> file_span(PyObject* filelike);

class PythonApp {
 public:
  // Imports `gilgamesh` and the app in the current interpreter and makes the
  // app of options.kind. Precondition: this interpreter's GIL is held (thread
  // state attached). Throws StartupError (kind app) naming module and reason.
  static std::unique_ptr<PythonApp> load(const AppOptions& options, const LoadContext& context);

  // Whether the interpreter runs with a GIL (false only on a free-threaded
  // build with the GIL still off after the app's imports). With the GIL.
  static bool gil_enabled();

  virtual ~PythonApp() = default;

  const std::vector<RouteInfo>& routes() const { return routes_; }
  // CPython's warnings, during the app's import, that an extension module
  // turned the GIL back on (free-threaded build); each names the module.
  const std::vector<std::string>& gil_warnings() const { return gil_warnings_; }

  // Answers one request with routes()[route_index] (a WSGI app has the one
  // route "*"). Precondition: the GIL of the interpreter that loaded this app
  // is held. Never throws for Python errors: HTTPError becomes its status,
  // anything else 500 (traceback logged), and so does a body over max_response.
  // An answer that streams goes to `sink` (when given) and the answer returned
  // is then empty and unused (sink->opened() says so).
  HttpResponseData handle(std::size_t route_index, const HttpRequestData& request,
                          ResponseSink* sink = nullptr);

  // Releases every Python reference. Precondition: the GIL is held. Called
  // before the interpreter ends; the destructor then does nothing Python.
  void release();

  // --- what runs on a worker's event loop (asgi_app.hpp) ---
  // Whether requests for this route are answered on the worker's event loop
  // (an ASGI app's, an `async def` route handler's) instead of on a lane.
  virtual bool on_loop(std::size_t /*route_index*/) const { return false; }
  virtual bool needs_loop() const { return false; }
  // On the loop, with the GIL: the coroutine that answers `request` (an async
  // route handler called, not yet run); empty with a Python exception set.
  virtual py::Ref start_call(std::size_t route_index, const HttpRequestData& request);
  // What that coroutine returned, as the answer (a body that iterates is collected).
  virtual HttpResponseData finish_call(std::size_t route_index, const HttpRequestData& request, PyObject* result);
  // The pending Python exception as the answer: HTTPError's status, else a logged 500.
  HttpResponseData error_answer(std::size_t route_index, const HttpRequestData& request);
  PyObject* handler_timeout_type() const { return errors_.handler_timeout.get(); }
  bool debug() const { return errors_.debug; }

 protected:
  PythonApp(const AppOptions& options, ErrorTypes errors);
  // The kind's answer; nullopt with a Python exception pending when the app
  // raised or broke its protocol.
  virtual std::optional<HttpResponseData> respond(std::size_t route_index,
                                                  const HttpRequestData& request,
                                                  StreamWriter& writer) = 0;
  virtual void release_kind() = 0;
  // The pending Python exception as the answer (HTTPError, HandlerTimeout, or a 500).
  HttpResponseData error_response(const std::string& request_id, const std::string& where);
  // The 500 of a body over --max-response, logged once, whoever noticed it.
  HttpResponseData too_large(const HttpRequestData& request, const std::string& where,
                             std::size_t size) const;

  std::vector<RouteInfo> routes_;
  const std::size_t max_response_;
  const std::string target_;  // what --app/--wsgi named, for log lines

 private:
  std::vector<std::string> gil_warnings_;
  ErrorTypes errors_;
};

}  // namespace gilgamesh

// The worker process's side of an ASGI app under `processes`: the process runs
// one event loop (apps/asgi_app.hpp's AsgiLoop, the same one the in-process
// strategies run) and talks to the server over one socket (frames.hpp, "the
// ASGI socket"): requests come in tagged with the server's request id, and
// answers, streamed bodies, and "this request has left the loop" go back.
//
// Threads: the loop's own thread runs Python and reads the socket (it watches
// it beside its eventfd, so a request begins on the thread that read it), the
// main thread waits for SIGTERM and the loop's end, a frames::Outbox writes what
// the socket does not take at once, and a supervisor
// looks at the loop every 50 ms: it tells the loop of clients the server said
// left, raises gilgamesh.HandlerTimeout in the loop's thread when a request is
// past its deadline while the loop is blocked (as the in-process strategies
// do), and ends the process when the loop stays stuck (AsgiLoop::stuck): the
// server answers what it held with 502 and starts a new process.
#pragma once

#include <csignal>

namespace gilgamesh {

struct ServerConfig;
class PythonApp;

// Serves `app` on `sock` until the server sends asgi_stop or closes the
// socket, or SIGTERM (the handler sets *sigterm and writes to `wake_fd`, an
// eventfd) arrives; then lets the held requests finish, runs the lifespan
// shutdown and returns the process's exit code. Before serving it runs the
// lifespan startup and sends `hello`, or `refused` with the app's message.
// Called with no thread state attached; the main interpreter's GIL is free.
int serve_asgi_socket(int worker, int sock, PythonApp& app, const ServerConfig& config, int wake_fd,
                      const volatile std::sig_atomic_t* sigterm);

}  // namespace gilgamesh

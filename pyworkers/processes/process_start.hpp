// Bringing up one worker process, for both of `processes`' workers: the lanes
// of a route or WSGI app (process_workers.cpp) and the event loop of an ASGI
// app (asgi_remote.cpp).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <vector>

namespace gilgamesh {

class Worker;
class ZygoteClient;
struct ServerConfig;

struct StartedProcess {
  std::vector<int> fds;  // the server's ends of its sockets (zygote_client.hpp), owned by the caller
  pid_t pid = 0;
};

// Asks the zygote for a worker process for `slot` and waits up to `timeout` for
// its first frame on fds[0]: `hello` when it is ready. Throws StartupError (its
// sockets closed): a `refused` frame's reason as the app's error, or how the
// process ended before it was ready.
StartedProcess start_worker_process(ZygoteClient& zygote, int slot, std::chrono::milliseconds timeout);

// The worker of an ASGI app: one process whose event loop holds up to
// --worker-connections requests (asgi_remote.cpp).
// `reactor`: the server's I/O threads read its answers (null: a thread of its own does).
std::unique_ptr<Worker> make_asgi_process_worker(ZygoteClient& zygote, int slot, const ServerConfig& config,
                                                 Reactor* reactor);

}  // namespace gilgamesh

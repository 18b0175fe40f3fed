#pragma once
// A descriptor watched by the server's I/O threads, for a worker-side part that
// would otherwise park a thread of its own on it (the `processes` ASGI worker's
// socket: asgi_remote.cpp). The interface keeps the pool free of Asio; the
// server implements it on its io_context (server/http/asio_reactor.hpp).
#include <functional>
#include <memory>

namespace gilgamesh {

class Reactor {
 public:
  class Watch {
   public:
    virtual ~Watch() = default;
    // No call of the watch's callback runs once this returns, nor ever after. From
    // any thread; from inside the callback itself it only stops the next one.
    virtual void cancel() = 0;
  };

  virtual ~Reactor() = default;
  // Calls `on_readable` on an I/O thread whenever `fd` can be read, one call at a
  // time, until it returns false or the watch is cancelled. It must not block: it
  // runs where connections are served. `fd` stays the caller's, and must stay open
  // until then; it may be made non-blocking (the server's reactor makes it so, since
  // Asio's waits need it), so the caller's own reads and writes on it must not count
  // on blocking (frames.cpp's waits for room when a send meets EAGAIN). The reactor
  // outlives every watch it made.
  virtual std::unique_ptr<Watch> watch(int fd, std::function<bool()> on_readable) = 0;
};

}  // namespace gilgamesh

// A response body that is sent while it is produced (a WSGI iterable or
// write(), a route handler's generator): the head goes out first, then each
// chunk as the handler makes it.
//
//   ResponseSink  what a handler's thread writes a streamed answer to. The pool
//                 gives each job one (Job::sink); the worker process of
//                 `processes` has its own, which turns the calls into frames.
//   BodyStream    the bounded buffer between that thread and the connection:
//                 the producer blocks while `capacity` bytes wait to be sent
//                 (backpressure: a slow client holds the handler back, memory
//                 does not grow), and learns when the client has gone.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace gilgamesh {

struct HttpResponseData;
struct Fd;

class BodyStream {
 public:
  // Bytes that may wait between producer and connection before push() blocks.
  static constexpr std::size_t kDefaultCapacity = 512 * 1024;

  explicit BodyStream(std::size_t capacity = kDefaultCapacity) : capacity_(capacity) {}
  // A new stream as its two ends: the producer's, and the consumer's, whose
  // last copy cancels the stream when it goes (an answer dropped unsent never
  // leaves its producer blocked).
  struct Ends {
    std::shared_ptr<BodyStream> producer;
    std::shared_ptr<BodyStream> consumer;
  };
  static Ends make(std::size_t capacity = kDefaultCapacity);
  BodyStream(const BodyStream&) = delete;
  BodyStream& operator=(const BodyStream&) = delete;

  // --- the producer (a handler's thread; no Python lock may be held) ---
  // Queues `chunk` (empty chunks are dropped), first waiting while `capacity`
  // bytes are already queued. False once the consumer has cancelled: the
  // client is gone, stop producing.
  bool push(std::string&& chunk);
  // push() for a producer that must never wait (an ASGI worker's event loop):
  // `chunk` is queued at once, even past the capacity. `full`: the capacity is
  // reached, produce no more until `room` is called (once, from the consumer's
  // thread when it took what was queued, or from cancel()). `cancelled`: the
  // client is gone, nothing was queued.
  enum class Offer { taken, full, cancelled };
  Offer offer(std::string&& chunk, std::function<void()> room);
  // The body is whole (ok) or broke off after the head (!ok: the connection
  // closes without ending the body, so the client sees it truncated).
  void finish(bool ok);

  // --- the consumer (the connection) ---
  enum class State { more, finished, failed, cancelled };
  struct Taken {
    std::vector<std::string> chunks;  // in order; empty when nothing was queued
    State state = State::more;        // after these chunks
  };
  // Everything queued so far (freeing the producer). When nothing is queued
  // and the body is not over, `ready` is kept and called once, from the
  // producer's thread, as soon as there is something to take; else it is dropped.
  Taken take(std::function<void()> ready);
  // The client left (or the server stops): the producer's push() returns
  // false, and a consumer's pending `ready` is called.
  void cancel();

 private:
  std::function<void()> notify_locked(std::unique_lock<std::mutex>& lock);

  const std::size_t capacity_;
  std::mutex mutex_;
  std::condition_variable space_;
  std::deque<std::string> queued_;
  std::size_t queued_bytes_ = 0;
  State state_ = State::more;
  std::function<void()> ready_;
  std::function<void()> room_;  // offer()'s producer, waiting for the queue to drain
};

// Where a handler's thread sends an answer that streams. Called in order:
// open() once, then push() for each chunk, then finish() once. An answer that
// does not stream (a body given whole) never touches the sink.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // The head: status, content type and headers as the handler gave them (the
  // body empty). Precondition: response_violation(head) is empty. False when
  // the answer cannot be streamed after all (the client is gone already).
  virtual bool open(HttpResponseData&& head) = 0;
  // One chunk of the body; blocks while the client is slow. False: the client
  // is gone, stop producing.
  virtual bool push(std::string_view chunk) = 0;
  // See BodyStream::finish.
  virtual void finish(bool ok) = 0;
  // Whether open() succeeded: the answer went out through the sink.
  virtual bool opened() const = 0;

  // Whether open_file() may be called: the pool's sink (the connection reads the file) and
  // a worker process's (it passes the descriptor to the server, which does); not where the
  // answer is collected.
  virtual bool takes_files() const { return false; }
  // Instead of open(): a body that is `length` bytes of the regular file `fd` from `offset`
  // (a WSGI app's wsgi.file_wrapper over a real file). The head goes out as open()'s and
  // the connection reads the file (file_body.hpp) as the client takes it: the handler's
  // thread is free at once. The head carries its Content-Length. Precondition:
  // takes_files(), response_violation(head) empty. False: the client is gone already.
  virtual bool open_file(HttpResponseData&& /*head*/, Fd&& /*fd*/, std::uint64_t /*offset*/,
                         std::uint64_t /*length*/) {
    return false;
  }
};

}  // namespace gilgamesh

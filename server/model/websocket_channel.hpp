// One WebSocket between the connection that owns its socket and the event loop
// that runs its app (an ASGI worker's loop). The connection makes it for an
// upgrade request and hands it over with the Job (Job::websocket); the app's
// decision comes back as the job's answer: status 101 (accepted, the app's
// headers on it) or an HTTP error (refused: 403; failed: 500). From the accept
// on, everything goes through the channel:
//
//   loop -> connection   send() a message (bounded: like BodyStream::offer, a
//                        loop never waits), more() (read one message more),
//                        close() (the close handshake, after what was sent)
//   connection -> loop   received() one whole message, ended() once when the
//                        socket is over (the close code), and the room
//                        callback of a send() that filled the buffer
//
// Neither side blocks on the other: the connection learns of new work through
// the `wake` callback of take(), the loop through the callback it attached.
// No Python here; no Python lock may be required by a callback.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace gilgamesh {

class WebSocketChannel {
 public:
  // Bytes the loop may queue before send() says `full`.
  static constexpr std::size_t kDefaultCapacity = 512 * 1024;
  // Close codes the server itself gives the loop (RFC 6455 7.4.1).
  static constexpr int kGoingAway = 1001, kNoStatus = 1005, kAbnormal = 1006, kInternalError = 1011;

  explicit WebSocketChannel(std::size_t capacity = kDefaultCapacity) : capacity_(capacity) {}
  WebSocketChannel(const WebSocketChannel&) = delete;
  WebSocketChannel& operator=(const WebSocketChannel&) = delete;

  struct Message {
    bool text = false;
    std::string data;  // UTF-8 when text
  };

  // --- the loop's side (never waits) ---
  // What the connection tells the loop: a message (`ended` false), or that the
  // socket is over (`ended` true, with its close code and reason). Called from
  // the connection's thread, in order; attach before the job is answered.
  struct Event {
    bool ended = false;
    Message message;
    int code = 0;
    std::string reason;
  };
  void attach_loop(std::function<void(Event&&)> to_loop);
  enum class Offer { taken, full, closed };
  // Queues `m` at once. `full`: `capacity` bytes wait, send no more until
  // `room` is called (once, when the connection took them, or when the socket
  // ends). `closed`: the socket is over, nothing was queued.
  Offer send(Message&& m, std::function<void()> room);
  // The connection may read one message more.
  void more();
  // The close handshake with `code` and `reason`, once what was queued is sent.
  // Only the first close counts.
  void close(int code, std::string reason);

  // --- the connection's side ---
  struct Work {
    std::vector<Message> messages;             // to send, in order
    unsigned reads = 0;                        // messages the loop asked for since the last take
    std::optional<std::pair<int, std::string>> close;  // after the messages
  };
  // What the loop asked for since the last take: the reads and the close, and
  // the queued messages when `with_messages` (the connection wrote the last
  // ones). `wake` is kept (replacing the one before) and called once, from the
  // loop's thread, when the loop asks for more; the channel drops it at ended().
  Work take(bool with_messages, std::function<void()> wake);
  // One whole message from the client, for the loop.
  void received(Message&& m);
  // The socket is over (once; later calls are ignored): the loop hears `code`,
  // send() says closed from now on, and a waiting send() gets its room.
  void ended(int code, std::string reason);
  bool is_ended() const;

 private:
  std::function<void()> wake_locked(std::unique_lock<std::mutex>& lock);

  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::function<void(Event&&)> to_loop_;
  std::vector<Message> queued_;
  std::size_t queued_bytes_ = 0;
  unsigned reads_ = 0;
  std::optional<std::pair<int, std::string>> close_;
  bool close_taken_ = false;
  bool ended_ = false;
  std::function<void()> wake_;
  std::function<void()> room_;
};

}  // namespace gilgamesh

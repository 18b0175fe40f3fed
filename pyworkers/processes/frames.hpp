// The wire between the server and its worker processes (`processes`).
//
// A worker process has one lane socket per thread (--threads N: N lanes), and,
// with N > 1, one worker control socket.
//
// Lane sockets (SOCK_STREAM socketpairs) carry frames, strictly one request
// then one response (or one streamed answer: head, chunks, end; or one `file` answer, its
// descriptor passed with it) per lane: a 16-byte header {u32 kind, u32 meta length,
// u64 body length} in host byte order, the metadata (everything but the body,
// encoded below), then the body bytes. Each side reads a whole frame before
// it writes, so bodies of any allowed size pass without deadlock; the one
// exception, a streamed answer, is read by the server as it comes
// (read_frame_buffered), and the worker only peeks for a `cancel` between chunks. A
// cancel can come after the worker ended its answer, and the next request right
// behind it, so the worker reads its lane buffered too. Lanes are
// independent: answers come back per lane, in any order across lanes. Both
// ends number the requests of a lane 1, 2, ... in the order they pass (the
// request number: what an interrupt names, so it never hits the next request).
//
// An ASGI app (--asgi) has one socket per worker process instead of lanes: the
// process's event loop holds many requests at once (--worker-connections), so
// frames of different requests interleave, each side writing whole frames
// back to back (both read with read_frame_buffered). Every such frame's meta
// starts with the request id (u64, the server's numbering), see tag()/untag().
// A streamed answer's chunks flow one at a time: after each `asgi_chunk` the
// worker waits for `asgi_room` (the server's buffer for that client has room),
// so one slow client never fills the socket the others share. A WebSocket
// (apps/asgi_app.hpp) is such a request too: asgi_ws_connect instead of
// asgi_request, its accept (101) or refusal an asgi_response; then its
// messages both ways. The app's go out in a window: the worker sends while
// fewer than kWsWindow / 2 bytes of them are unacknowledged, and the server
// acknowledges them in bulk (asgi_room with a byte count) once that much is
// taken, or when its client has read what filled the connection's buffer.
//
// The worker control socket (SOCK_SEQPACKET, server -> worker process only)
// carries fixed 16-byte messages {u32 kind, u32 lane, u64 request number}:
// today only "interrupt": raise gilgamesh.HandlerTimeout in that lane's
// handler if it still runs that request. The server never waits to send one.
//
// The zygote's control socket (SOCK_SEQPACKET) carries one JSON object per
// message, optionally with file descriptors (SCM_RIGHTS; any number: more than
// fit in one message go ahead in messages of their own, which the receiver
// gathers into the one that follows).
#pragma once

#include "server/model/executor.hpp"
#include "server/model/file_body.hpp"

#include <nlohmann/json.hpp>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <csignal>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gilgamesh::frames {

enum class Kind : std::uint32_t {
  hello = 1,     // worker -> server once, when it is ready: meta is its pid
  request = 2,   // server -> worker: encode_request_meta + request body
  response = 3,  // worker -> server: encode_response_meta + response body
  // An answer that streams (server/model/body_stream.hpp), instead of `response`:
  head = 4,      // worker -> server: encode_response_meta of the head, no body
  chunk = 5,     // worker -> server: a piece of the body
  end = 6,       // worker -> server: the body is over; meta "1" whole, "0" broken off
  cancel = 7,    // server -> worker, only while its answer streams: the client left, stop.
                 // The worker looks for it after each chunk; one that comes after the end
                 // is skipped before the next request.
  // The ASGI socket (above); the meta of each starts with the request id.
  asgi_request = 8,   // server -> worker: id, u64 microseconds to the deadline, then
                      // encode_request_meta; body: the request body
  asgi_room = 9,      // server -> worker: the last chunk was taken, send the next; for a
                      // WebSocket: id, then N: N bytes of its messages were taken
  asgi_gone = 10,     // server -> worker: the client left
  asgi_stop = 11,     // server -> worker (id 0): take no more requests, finish those held,
                      // run the lifespan shutdown and exit
  asgi_response = 12, // worker -> server: a whole answer: id, encode_response_meta; body
  asgi_head = 13,     // worker -> server: the head of an answer that streams
  asgi_chunk = 14,    // worker -> server: one piece of its body (then it waits for asgi_room)
  asgi_end = 15,      // worker -> server: id, then "1" the body is whole, "0" broken off
  asgi_done = 16,     // worker -> server: the request has left the loop (its place is free)
  refused = 17,       // worker -> server instead of `hello`: it cannot serve; meta says why
  // A WebSocket on the ASGI socket (the server owns the socket, the worker's loop the app):
  asgi_ws_connect = 18,  // server -> worker: an upgrade request, as asgi_request
  asgi_ws_message = 19,  // server -> worker: id, "t" (text) or "b"; body: one whole message
  asgi_ws_closed = 20,   // server -> worker: id, then "CODE REASON": the socket is over (once)
  asgi_ws_send = 21,     // worker -> server: id, "t" or "b"; body: one message (sent while
                         // fewer than kWsWindow / 2 bytes wait for their asgi_room)
  asgi_ws_more = 22,     // worker -> server: id, then N: read N more messages from the client
  asgi_ws_close = 23,    // worker -> server: id, then "CODE REASON": the app's close, after
                         // what it sent
  asgi_stopped = 24,     // worker -> server (id 0): its loop has ended (after asgi_stop, its
                         // lifespan shutdown run); the process leaves once the app's threads have
  // On a lane, instead of `response`: an answer whose body is a file (a WSGI app's
  // wsgi.file_wrapper over a real file). meta: encode_file_meta; no body; the file's
  // descriptor comes with the frame's first byte (SCM_RIGHTS), and the server reads the file.
  file = 25,
  // worker -> server instead of asgi_response: an answer whose body is a file (an ASGI app's
  // http.response.pathsend): id, then encode_file_meta; no body; the file's descriptor comes
  // with the frame (SCM_RIGHTS), and the server reads the file.
  asgi_file = 26,
};
constexpr std::uint32_t kLastKind = 26;

// A WebSocket's send window under `processes` (above): bytes of the app's messages.
constexpr std::size_t kWsWindow = 256 * 1024;

struct Frame {
  Kind kind = Kind::hello;
  std::string meta;
  std::string body;
};

// The largest frame a reader accepts (checked before allocating).
struct Limits {
  std::size_t max_meta = std::size_t{64} << 20;
  std::uint64_t max_body = std::uint64_t{1} << 34;
};

enum class ReadStatus {
  ok,
  closed,     // end of stream before the first byte of a frame: the peer left cleanly
  truncated,  // end of stream inside a frame
  failed,     // a socket error (errno in ReadResult::error)
  invalid,    // unknown kind, or larger than the limits
};

struct ReadResult {
  ReadStatus status = ReadStatus::ok;
  int error = 0;
  bool ok() const { return status == ReadStatus::ok; }
  std::string describe() const;
};

// Writes a whole frame (blocking; EINTR retried; no SIGPIPE). On failure
// returns false and sets *error to errno if given.
bool write_frame(int fd, Kind kind, std::string_view meta, std::string_view body,
                 int* error = nullptr);
// Reads a whole frame (blocking; EINTR retried) from a peer that sends one
// frame and then waits (a worker's first frame): bytes past it are `invalid`.
ReadResult read_frame(int fd, Frame& out, const Limits& limits = {});
// As read_frame, from a peer that may send frames back to back (a worker's
// streamed answer: head, chunks, end; the server's `cancel` for an answer the
// worker had ended already, then its next request): bytes received past this
// frame are kept in `carry` and the next call with the same `carry` starts
// with them. With `stop`, a signal that interrupts the wait for the frame's
// first byte while *stop is set (and `carry` is empty) ends the read instead:
// {failed, EINTR}. (A signal that lands just before the wait begins is seen at
// the next frame or when the peer closes.)
// With `passed`, descriptors that come with the bytes (SCM_RIGHTS: a `file` frame's) are
// added to it, in order; without, the kernel closes them.
ReadResult read_frame_buffered(int fd, Frame& out, std::string& carry, const Limits& limits = {},
                               const volatile std::sig_atomic_t* stop = nullptr, std::deque<Fd>* passed = nullptr);
// A frame with no body whose first byte carries the descriptor `passed_fd` (SCM_RIGHTS: the
// receiver gets its own copy), blocking as write_frame.
bool write_frame_with_fd(int fd, Kind kind, std::string_view meta, int passed_fd, int* error = nullptr);

// Frames from a peer that sends them back to back, read without ever blocking:
// for an event loop that watches the socket (a worker process's ASGI loop reads
// the server's frames on its own thread). receive() takes what the socket holds
// now; next() gives the whole frames received so far, in order. A frame larger
// than what one receive() takes (a large request body) comes whole over several.
class FrameReader {
 public:
  explicit FrameReader(int fd, const Limits& limits = {}) : fd_(fd), limits_(limits) {}

  // Reads what the socket holds now, up to `budget` bytes (the peer's later bytes
  // wait for the next call). ok also when it held nothing; closed when the peer
  // has left (truncated if it left inside a frame); failed: a socket error. The
  // frames received before the end are still there for next(). The room a large
  // frame took (over 1 MiB) is given back at the first call after it was taken.
  ReadResult receive(std::size_t budget = std::size_t{1} << 20);
  // The next whole frame: true and `out` filled; false when none is whole yet, or
  // when the next one is over the limits or of no kind (`invalid` set then).
  bool next(Frame& out, bool& invalid);

  // The first descriptor received with the bytes (SCM_RIGHTS: an asgi_file frame's, which
  // comes with its bytes or ahead of them) not taken yet; Fd() when there is none.
  Fd take_passed();

  // receive(), then each whole frame to `handle`, in order. `broken` says how the
  // peer broke the protocol ("a malformed frame": `handle` returned false; one over
  // the limits or of no kind; one too large for memory), and no frame goes to
  // `handle` after it; empty when it did not.
  struct Drained {
    ReadResult got;
    std::string broken;
  };
  Drained drain(const std::function<bool(Frame&)>& handle, std::size_t budget = std::size_t{1} << 20);

 private:
  const int fd_;
  const Limits limits_;
  std::string in_;       // bytes received, the frames not taken yet from pos_ on
  std::size_t pos_ = 0;
  std::deque<Fd> passed_;  // descriptors received, in order, not taken yet
};

// Everything of a request but its body, and back. Decoding rejects (false) any
// metadata that is short, long, or otherwise not what encoding produced.
std::string encode_request_meta(std::size_t route_index, const HttpRequestData& request);
bool decode_request_meta(std::string_view meta, std::size_t& route_index, HttpRequestData& out);
std::string encode_response_meta(const HttpResponseData& response);
bool decode_response_meta(std::string_view meta, HttpResponseData& out);
// A `file` frame's meta: the answer's head (its Content-Length in it), and which bytes of the
// file are its body.
std::string encode_file_meta(const HttpResponseData& head, std::uint64_t offset, std::uint64_t length);
bool decode_file_meta(std::string_view meta, HttpResponseData& head, std::uint64_t& offset, std::uint64_t& length);

// The request id in front of an ASGI frame's meta, and back: untag() strips it
// from `meta`; false when the meta is too short to hold one.
std::string tag(std::uint64_t id, std::string_view rest = {});
bool untag(std::string_view& meta, std::uint64_t& id);
// An asgi_request's meta: id, the time left to its deadline, the request.
// A WebSocket close's "CODE REASON" (asgi_ws_closed, asgi_ws_close), and back;
// false when it is not a code from 1000 to 4999 followed by a space.
std::string encode_ws_close(int code, std::string_view reason);
bool decode_ws_close(std::string_view meta, int& code, std::string& reason);
std::string encode_asgi_request(std::uint64_t id, std::chrono::microseconds left, std::size_t route_index,
                                const HttpRequestData& request);
bool decode_asgi_request(std::string_view meta, std::uint64_t& id, std::chrono::microseconds& left,
                         std::size_t& route_index, HttpRequestData& out);

// Writes frames to a socket in the order posted: at once, from the thread that
// posts, when none is waiting and the socket takes it without blocking; else (the
// rest of it) from a thread of its own. post() never blocks (an event loop, a
// connection's thread and the pool's supervisor all post). After a write fails
// (the peer is gone) the rest are dropped. Held by shared_ptr: a callback that
// may outlive the socket's owner keeps a weak_ptr.
class Outbox {
 public:
  explicit Outbox(int fd);
  ~Outbox();  // close()
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  void post(Kind kind, std::string meta, std::string body = {});
  // A frame with no body that carries `passed` (SCM_RIGHTS, with its first byte written; the
  // receiver gets its own copy, this one is closed once the frame is written or dropped).
  void post_with_fd(Kind kind, std::string meta, Fd&& passed);
  // A frame with no body that need not go at once (a worker's asgi_done): it goes
  // ahead of the next post(), in the same write, or at flush() or close(). An event
  // loop holds back what it posts while its callbacks run, and flushes before it waits.
  void post_later(Kind kind, std::string_view meta);
  void flush();
  // Writes what is queued, then ends the thread. Idempotent.
  void close();
  bool failed() const;

 private:
  struct Item {
    std::string prefix;       // frames post_later() held back, whole
    std::optional<Kind> kind;  // then this frame, if any
    std::string meta, body;
    Fd passed;  // goes with the first byte written (post_with_fd)
    std::size_t written = 0;  // bytes post() wrote already (the first ones)
    std::size_t size() const;
    ssize_t send(int fd, int flags) const;
  };
  void post_frame(Kind kind, std::string&& meta, std::string&& body, Fd&& passed);
  bool enqueue_locked(Item item);
  void run();

  const int fd_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Item> queue_;
  std::string later_;  // post_later()'s frames, until the next write
  bool writing_ = false;  // the thread writes an item it took from the queue
  bool closing_ = false;
  bool failed_ = false;
  std::thread thread_;
};

// One control message, as sent or received.
struct ControlMessage {
  nlohmann::json body;
  std::vector<int> fds;  // descriptors that came with it (close-on-exec), owned by the receiver
  void close_fds();
};

// Largest control message; longer strings should be cut by the sender.
constexpr std::size_t kMaxControlMessage = 128 * 1024;
// Descriptors per SEQPACKET message (the kernel allows 253); more go ahead in
// {"type":"fds"} messages of their own.
constexpr std::size_t kMaxFdsPerMessage = 64;

// Sends `body` with `pass_fds` (which stay open here). Blocking.
bool send_control(int fd, const nlohmann::json& body, std::span<const int> pass_fds = {});
// Blocks for the next message, with every descriptor sent with it. False at
// end of stream or on error (*error says which), or for a message that is not
// a JSON object; then no descriptor is left open.
bool receive_control(int fd, ControlMessage& out, std::string* error = nullptr);

// The worker control socket's messages (server -> worker process).
enum class WorkerControlKind : std::uint32_t {
  interrupt = 1,  // raise gilgamesh.HandlerTimeout in `lane` if it still runs request `number`
};
struct WorkerControl {
  WorkerControlKind kind = WorkerControlKind::interrupt;
  std::uint32_t lane = 0;
  std::uint64_t number = 0;  // the lane's request number (1, 2, ...)
};
constexpr std::size_t kWorkerControlSize = 16;
std::string encode_worker_control(const WorkerControl& message);
// False for anything but a well-formed message (size, kind, number > 0).
bool decode_worker_control(std::string_view bytes, WorkerControl& out);
// Never blocks: false when the socket's buffer is full (the receiver is behind)
// or the peer is gone (errno says which).
bool send_worker_control(int fd, const WorkerControl& message);
// Blocks for the next message; EINTR retried. False at end of stream or on a
// socket error; a malformed message is skipped.
bool receive_worker_control(int fd, WorkerControl& out);

}  // namespace gilgamesh::frames

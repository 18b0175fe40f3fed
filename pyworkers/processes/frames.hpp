// The wire between the server and its worker processes (`processes`).
//
// Worker sockets (SOCK_STREAM socketpairs) carry frames, strictly one request
// then one response per worker: a 16-byte header {u32 kind, u32 meta length,
// u64 body length} in host byte order, the metadata (everything but the body,
// encoded below), then the body bytes. Each side reads a whole frame before
// it writes, so bodies of any allowed size pass without deadlock.
//
// The zygote's control socket (SOCK_SEQPACKET) carries one JSON object per
// message, optionally with one file descriptor (SCM_RIGHTS).
#pragma once

#include "server/model/executor.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <csignal>
#include <string>
#include <string_view>

namespace gilgamesh::frames {

enum class Kind : std::uint32_t {
  hello = 1,     // worker -> server once, when it is ready: meta is its pid
  request = 2,   // server -> worker: encode_request_meta + request body
  response = 3,  // worker -> server: encode_response_meta + response body
};

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
// Reads a whole frame (blocking; EINTR retried). With `stop`, a signal that
// interrupts the wait for the frame's first byte while *stop is set ends the
// read instead: {failed, EINTR}. (A signal that lands just before the wait
// begins is seen at the next frame or when the peer closes.)
ReadResult read_frame(int fd, Frame& out, const Limits& limits = {},
                      const volatile std::sig_atomic_t* stop = nullptr);

// Everything of a request but its body, and back. Decoding rejects (false) any
// metadata that is short, long, or otherwise not what encoding produced.
std::string encode_request_meta(std::size_t route_index, const HttpRequestData& request);
bool decode_request_meta(std::string_view meta, std::size_t& route_index, HttpRequestData& out);
std::string encode_response_meta(const HttpResponseData& response);
bool decode_response_meta(std::string_view meta, HttpResponseData& out);

// One control message, as sent or received.
struct ControlMessage {
  nlohmann::json body;
  int fd = -1;  // a descriptor that came with it (close-on-exec), owned by the receiver
};

// Largest control message; longer strings should be cut by the sender.
constexpr std::size_t kMaxControlMessage = 128 * 1024;

// Sends `body` (and `pass_fd` when >= 0, which stays open here) as one message.
bool send_control(int fd, const nlohmann::json& body, int pass_fd = -1);
// Blocks for the next message. False at end of stream or on error (*error
// says which), or for a message that is not a JSON object.
bool receive_control(int fd, ControlMessage& out, std::string* error = nullptr);

}  // namespace gilgamesh::frames

// Fuzz target 3: the processes strategy's frame decoder (pyworkers/processes/frames.hpp):
// bytes a worker process could send (a crashed or hostile worker) read back by
// read_frame() and read_frame_buffered() (frame after frame) from a real socket, and by a
// FrameReader (what a worker process's loop reads with: without blocking, in reads of a size the
// input picks), which must give the same frames as read_frame_buffered; then the metadata decoded as the server
// (response) and a worker (request) decode it; and the same bytes as a worker
// control message (what a worker process's control thread decodes).
//
// Checked: nothing throws or reads out of bounds; a frame read is within the
// limits; a decoded response round-trips through encode/decode unchanged; and
// a decoded request does too; a decoded worker control message re-encodes to
// the same bytes.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "pyworkers/processes/frames.hpp"
#include "server/model/response.hpp"

namespace {

using namespace gilgamesh;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_frames: %s\n", what);
  std::abort();
}

bool same(const HttpResponseData& a, const HttpResponseData& b) {
  if (a.status != b.status || a.content_type != b.content_type || a.body != b.body ||
      a.headers.size() != b.headers.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.headers.size(); ++i) {
    if (a.headers[i].name != b.headers[i].name || a.headers[i].value != b.headers[i].value) return false;
  }
  return true;
}

void decode_meta(std::string_view meta) {
  {
    std::uint64_t id = 0;
    std::chrono::microseconds left{};
    std::size_t route = 0;
    HttpRequestData request;
    if (frames::decode_asgi_request(meta, id, left, route, request)) {
      std::uint64_t id2 = 0;
      std::chrono::microseconds left2{};
      std::size_t route2 = 0;
      HttpRequestData again;
      if (!frames::decode_asgi_request(frames::encode_asgi_request(id, left, route, request), id2, left2, route2,
                                       again) ||
          id2 != id || left2 != left || route2 != route || again.target != request.target) {
        fail("an ASGI request changed through encode/decode");
      }
    }
  }
  HttpResponseData response;
  if (frames::decode_response_meta(meta, response)) {
    HttpResponseData again;
    if (!frames::decode_response_meta(frames::encode_response_meta(response), again)) {
      fail("an encoded response does not decode");
    }
    again.body = response.body;
    if (!same(response, again)) fail("a response changed through encode/decode");
    (void)response_violation(response);  // what the server checks next: must not throw
  }
  HttpResponseData head;
  std::uint64_t offset = 0, length = 0;
  if (frames::decode_file_meta(meta, head, offset, length)) {
    HttpResponseData again;
    std::uint64_t offset2 = 0, length2 = 0;
    if (!frames::decode_file_meta(frames::encode_file_meta(head, offset, length), again, offset2, length2) ||
        offset2 != offset || length2 != length || !same(head, again)) {
      fail("a file answer changed through encode/decode");
    }
  }
  std::size_t route = 0;
  HttpRequestData request;
  if (frames::decode_request_meta(meta, route, request)) {
    std::size_t route2 = 0;
    HttpRequestData again;
    if (!frames::decode_request_meta(frames::encode_request_meta(route, request), route2, again)) {
      fail("an encoded request does not decode");
    }
    if (route2 != route || again.method != request.method || again.path != request.path ||
        again.query_string != request.query_string || again.headers.size() != request.headers.size() ||
        again.path_params.size() != request.path_params.size()) {
      fail("a request changed through encode/decode");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  decode_meta(bytes);
  frames::WorkerControl control;
  if (frames::decode_worker_control(bytes, control) && frames::encode_worker_control(control) != bytes) {
    fail("a worker control message changed through decode/encode");
  }

  // The same bytes as a socket would carry them: read as one frame (read_frame,
  // a worker's first frame), then as frames back to back (read_frame_buffered,
  // what the server and the workers read everything else with).
  if (size > 128 * 1024) return 0;  // more than the socket buffer holds without a reader
  frames::Limits limits;
  limits.max_meta = 1 << 20;
  limits.max_body = 1 << 20;
  std::vector<frames::Frame> buffered_frames;
  auto socket_with_input = [&](int fds[2]) {
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) fail("socketpair");
    std::size_t sent = 0;
    while (sent < size) {
      const ssize_t n = ::send(fds[0], data + sent, size - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    ::shutdown(fds[0], SHUT_WR);
  };
  for (const bool buffered : {false, true}) {
    int fds[2];
    socket_with_input(fds);
    std::string carry;
    for (std::size_t frames_read = 0;; ++frames_read) {
      if (frames_read > size) fail("more frames than input bytes");
      frames::Frame frame;
      const frames::ReadResult r = buffered ? frames::read_frame_buffered(fds[1], frame, carry, limits)
                                            : frames::read_frame(fds[1], frame, limits);
      if (!r.ok()) {
        (void)r.describe();
        break;
      }
      if (frame.meta.size() > limits.max_meta || frame.body.size() > limits.max_body) fail("a frame over the limits");
      decode_meta(frame.meta);
      if (!buffered) break;
      buffered_frames.push_back(std::move(frame));
    }
    ::close(fds[0]);
    ::close(fds[1]);
  }

  // A FrameReader, in reads of 1 to 4096 bytes: the same frames, in the same order.
  int fds[2];
  socket_with_input(fds);
  frames::FrameReader reader(fds[1], limits);
  const std::size_t budget = 1 + (size == 0 ? 0 : (data[0] * 16 + data[size - 1]) % 4096);
  std::vector<frames::Frame> read;
  for (bool over = false; !over;) {
    const frames::ReadResult r = reader.receive(budget);
    over = !r.ok();
    frames::Frame frame;
    bool invalid = false;
    while (reader.next(frame, invalid)) read.push_back(std::move(frame));
    if (invalid) over = true;
    if (read.size() > size) fail("a FrameReader gave more frames than input bytes");
  }
  ::close(fds[0]);
  ::close(fds[1]);
  if (read.size() != buffered_frames.size()) fail("a FrameReader gave another number of frames");
  for (std::size_t i = 0; i < read.size(); ++i) {
    if (read[i].kind != buffered_frames[i].kind || read[i].meta != buffered_frames[i].meta ||
        read[i].body != buffered_frames[i].body) {
      fail("a FrameReader gave another frame");
    }
  }
  return 0;
}

// The wire of `--strategy processes`: metadata encoding, whole frames over a
// socketpair (small, 8 MiB, cut off, oversized), a `file` frame with its descriptor,
// control messages with descriptors (one, and more than fit in one message), worker
// control messages.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "pyworkers/processes/frames.hpp"

using namespace gilgamesh;
using namespace gilgamesh::frames;

namespace {

// Every read and write on these sockets gives up after kIoTimeout (EAGAIN): a test
// whose other side never comes fails by name, instead of hanging until ctest kills it.
constexpr timeval kIoTimeout{10, 0};

struct SocketPair {
  int a = -1, b = -1;
  explicit SocketPair(int type = SOCK_STREAM) {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
    a = sv[0];
    b = sv[1];
    for (int fd : sv) {
      EXPECT_EQ(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &kIoTimeout, sizeof kIoTimeout), 0);
      EXPECT_EQ(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &kIoTimeout, sizeof kIoTimeout), 0);
    }
  }
  ~SocketPair() {
    if (a >= 0) close(a);
    if (b >= 0) close(b);
  }
};

// A thread playing the other end (`fd`) of a socket pair. However its body ends (a
// failed ASSERT returns from it early), it shuts `fd` down: the test's next read sees
// end of stream at once instead of waiting for an answer that will not come. If the
// test returns first (its own ASSERT failed), the destructor shuts down the test's end
// (`own_fd`), so a peer blocked reading sees end of stream too, then joins.
class Peer {
 public:
  template <class Body>
  Peer(int fd, int own_fd, Body body)
      : own_fd_(own_fd), thread_([fd, body = std::move(body)]() mutable {
          body();
          ::shutdown(fd, SHUT_RDWR);
        }) {}
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;
  ~Peer() {
    if (!thread_.joinable()) return;
    ::shutdown(own_fd_, SHUT_RDWR);
    thread_.join();
  }
  void join() { thread_.join(); }

 private:
  int own_fd_;
  std::thread thread_;
};

HttpRequestData sample_request() {
  HttpRequestData r;
  r.method = "POST";
  r.path = "/echo/caf\xc3\xa9";
  r.query_string = "a=1&b=%20&c";
  r.request_id = "req-42";
  r.headers = {{"Host", "127.0.0.1"}, {"X-Empty", ""}, {"X-Bin", std::string("a\0b", 3)}};
  r.body = "ignored by the meta";
  return r;
}

}  // namespace

TEST(Frames, RequestMetaRoundTrips) {
  const HttpRequestData in = sample_request();
  const std::string meta = encode_request_meta(7, in);
  std::size_t route = 0;
  HttpRequestData out;
  ASSERT_TRUE(decode_request_meta(meta, route, out));
  EXPECT_EQ(route, 7u);
  EXPECT_EQ(out.method, in.method);
  EXPECT_EQ(out.path, in.path);
  EXPECT_EQ(out.query_string, in.query_string);
  EXPECT_EQ(out.request_id, in.request_id);
  ASSERT_EQ(out.headers.size(), 3u);
  EXPECT_EQ(out.headers[2].value, std::string("a\0b", 3));
  EXPECT_TRUE(out.body.empty());
}

TEST(Frames, ResponseMetaRoundTrips) {
  HttpResponseData in;
  in.status = 418;
  in.content_type = "text/csv";
  in.headers = {{"X-One", "1"}, {"Set-Cookie", "a=b"}};
  HttpResponseData out;
  ASSERT_TRUE(decode_response_meta(encode_response_meta(in), out));
  EXPECT_EQ(out.status, 418);
  EXPECT_EQ(out.content_type, "text/csv");
  ASSERT_EQ(out.headers.size(), 2u);
  EXPECT_EQ(out.headers[1].name, "Set-Cookie");
  EXPECT_EQ(out.headers[1].value, "a=b");
}

TEST(Frames, MalformedMetaIsRejected) {
  const std::string meta = encode_request_meta(1, sample_request());
  std::size_t route = 0;
  for (std::size_t cut = 0; cut < meta.size(); ++cut) {
    HttpRequestData out;
    EXPECT_FALSE(decode_request_meta(std::string_view(meta).substr(0, cut), route, out)) << cut;
  }
  HttpRequestData out;
  EXPECT_FALSE(decode_request_meta(meta + "x", route, out));  // trailing bytes

  // A status no response may have still crosses intact: the HTTP layer refuses it
  // (500) for every strategy alike, instead of the worker being taken for broken.
  for (int status : {99, -1, 1000}) {
    HttpResponseData bad;
    bad.status = status;
    HttpResponseData decoded;
    ASSERT_TRUE(decode_response_meta(encode_response_meta(bad), decoded)) << status;
    EXPECT_TRUE(decoded.status < 200 || decoded.status > 599) << status;
  }
}

TEST(Frames, SmallFrameOverASocket) {
  SocketPair s;
  ASSERT_TRUE(write_frame(s.a, Kind::response, "meta", "body"));
  Frame f;
  ASSERT_TRUE(read_frame(s.b, f).ok());
  EXPECT_EQ(f.kind, Kind::response);
  EXPECT_EQ(f.meta, "meta");
  EXPECT_EQ(f.body, "body");
  // Empty parts, twice in a row.
  ASSERT_TRUE(write_frame(s.a, Kind::hello, "", ""));
  ASSERT_TRUE(read_frame(s.b, f).ok());
  EXPECT_EQ(f.kind, Kind::hello);
  EXPECT_TRUE(f.meta.empty() && f.body.empty());
}

TEST(Frames, EightMebibyteBodiesBothWays) {
  SocketPair s;
  std::string body(8 << 20, '\0');
  for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 2654435761u >> 13);
  // Echo peer: reads a whole frame, then writes it back (as a worker does).
  Peer peer(s.b, s.a, [&] {
    Frame in;
    ASSERT_TRUE(read_frame(s.b, in).ok());
    ASSERT_TRUE(write_frame(s.b, Kind::response, in.meta, in.body));
  });
  ASSERT_TRUE(write_frame(s.a, Kind::request, "m", body));
  Frame back;
  ASSERT_TRUE(read_frame(s.a, back).ok()) << "the echo peer did not answer";
  peer.join();
  EXPECT_EQ(back.meta, "m");
  EXPECT_TRUE(back.body == body);
}

// The server's reactor watches a dup of a worker's socket, and Asio makes that
// descriptor non-blocking, the caller's with it (they share their flags): a write
// that blocks must still wait for room rather than fail.
TEST(Frames, AWriteThatBlocksWaitsForRoomOnASocketMadeNonBlocking) {
  SocketPair s;
  ASSERT_EQ(fcntl(s.a, F_SETFL, fcntl(s.a, F_GETFL) | O_NONBLOCK), 0);
  const std::string body(4 << 20, 'x');  // far past the socket's buffer
  Peer peer(s.b, s.a, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the writer fills the buffer first
    Frame in;
    ASSERT_TRUE(read_frame(s.b, in).ok());
    EXPECT_TRUE(in.body == body);
  });
  int error = 0;
  EXPECT_TRUE(write_frame(s.a, Kind::response, "m", body, &error)) << std::strerror(error);
  peer.join();
}

TEST(Frames, AStreamedAnswerIsReadFrameByFrameWhateverArrivesTogether) {
  SocketPair s;
  // A worker's streamed answer, written back to back before the server reads any of it:
  // small frames that one recv takes together, and a large chunk that straddles reads.
  const std::string big(300 * 1024, 'x');
  Peer peer(s.b, s.a, [&] {
    ASSERT_TRUE(write_frame(s.b, Kind::head, "head-meta", ""));
    ASSERT_TRUE(write_frame(s.b, Kind::chunk, "", "one"));
    ASSERT_TRUE(write_frame(s.b, Kind::chunk, "", big));
    ASSERT_TRUE(write_frame(s.b, Kind::chunk, "", "three"));
    ASSERT_TRUE(write_frame(s.b, Kind::end, "1", ""));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // all of it waits in the socket
  std::string carry;
  Frame f;
  const std::pair<Kind, std::string> expected[] = {
      {Kind::head, ""}, {Kind::chunk, "one"}, {Kind::chunk, big}, {Kind::chunk, "three"}, {Kind::end, ""}};
  for (const auto& [kind, body] : expected) {
    ASSERT_TRUE(read_frame_buffered(s.a, f, carry).ok());
    EXPECT_EQ(f.kind, kind);
    EXPECT_TRUE(f.body == body);
  }
  EXPECT_EQ(f.meta, "1");
  EXPECT_TRUE(carry.empty());
  peer.join();
  EXPECT_EQ(read_frame_buffered(s.a, f, carry).status, ReadStatus::closed);
  // The unbuffered reader refuses a peer that sends frames back to back.
  SocketPair t;
  ASSERT_TRUE(write_frame(t.b, Kind::chunk, "", "a"));
  ASSERT_TRUE(write_frame(t.b, Kind::chunk, "", "b"));
  EXPECT_EQ(read_frame(t.a, f).status, ReadStatus::invalid);
}

// A worker process's loop reads the server's frames without blocking: whatever the
// socket holds when it looks, a frame split anywhere, frames back to back.
TEST(Frames, AFrameReaderGivesWholeFramesHoweverTheBytesArrive) {
  SocketPair s;
  FrameReader reader(s.a);
  Frame f;
  bool invalid = true;
  EXPECT_TRUE(reader.receive().ok());  // nothing there: it returns at once
  EXPECT_FALSE(reader.next(f, invalid));
  EXPECT_FALSE(invalid);

  // Three frames, written first to a second pair to take their bytes, then fed one
  // byte at a time.
  SocketPair bytes;
  ASSERT_TRUE(write_frame(bytes.b, Kind::asgi_request, "first", "body one"));
  ASSERT_TRUE(write_frame(bytes.b, Kind::asgi_room, "second", ""));
  ASSERT_TRUE(write_frame(bytes.b, Kind::asgi_gone, "", "3"));
  char wire[256];
  const ssize_t n = recv(bytes.a, wire, sizeof wire, 0);
  ASSERT_EQ(n, 3 * 16 + 5 + 8 + 6 + 1);
  std::vector<Frame> got;
  for (ssize_t i = 0; i < n; ++i) {
    ASSERT_EQ(send(s.b, wire + i, 1, 0), 1);
    ASSERT_TRUE(reader.receive().ok());
    while (reader.next(f, invalid)) got.push_back(f);
    ASSERT_FALSE(invalid);
    // Each frame comes out with its last byte, not before: 29, 22 and 17 bytes.
    const std::size_t whole = (i + 1 >= 29 ? 1 : 0) + (i + 1 >= 51 ? 1 : 0) + (i + 1 >= 68 ? 1 : 0);
    EXPECT_EQ(got.size(), whole) << i;
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].kind, Kind::asgi_request);
  EXPECT_EQ(got[0].meta, "first");
  EXPECT_EQ(got[0].body, "body one");
  EXPECT_EQ(got[1].kind, Kind::asgi_room);
  EXPECT_EQ(got[1].meta, "second");
  EXPECT_EQ(got[1].body, "");
  EXPECT_EQ(got[2].kind, Kind::asgi_gone);
  EXPECT_EQ(got[2].body, "3");

  // All three at once: one receive(), three frames.
  ASSERT_EQ(send(s.b, wire, static_cast<std::size_t>(n), 0), n);
  ASSERT_TRUE(reader.receive().ok());
  int frames = 0;
  while (reader.next(f, invalid)) ++frames;
  EXPECT_EQ(frames, 3);
}

// A body larger than one receive() takes arrives over several; the frames before the
// peer's end still come out, then the end: closed between frames, truncated inside one.
TEST(Frames, AFrameReaderTakesALargeBodyOverSeveralReadsAndSeesTheEnd) {
  SocketPair s;
  const std::string big(3 * 1024 * 1024 + 7, 'y');
  Peer peer(s.b, s.a, [&] {
    ASSERT_TRUE(write_frame(s.b, Kind::asgi_request, "big", big));
    ASSERT_TRUE(write_frame(s.b, Kind::asgi_stop, "", ""));
  });
  FrameReader reader(s.a);
  Frame f;
  bool invalid = false;
  std::vector<Frame> got;
  int receives = 0;
  ReadResult status;
  while (status.ok()) {
    pollfd p{s.a, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 10000), 1);
    status = reader.receive(256 * 1024);
    ++receives;
    while (reader.next(f, invalid)) got.push_back(f);
    ASSERT_FALSE(invalid);
  }
  EXPECT_EQ(status.status, ReadStatus::closed);
  EXPECT_GE(receives, 12);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].meta, "big");
  EXPECT_TRUE(got[0].body == big);
  EXPECT_EQ(got[1].kind, Kind::asgi_stop);
  peer.join();

  // A large frame alone, then a small one: both whole (the large one's bytes are
  // handed over as its body, and the reader starts afresh after it).
  SocketPair v;
  const std::string large(2 * 1024 * 1024, 'z');
  std::atomic<bool> first_taken{false};
  Peer writer(v.b, v.a, [&] {
    ASSERT_TRUE(write_frame(v.b, Kind::asgi_request, "large", large));
    while (!first_taken) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_TRUE(write_frame(v.b, Kind::asgi_gone, "small", "s"));
  });
  FrameReader alone(v.a);
  got.clear();
  while (got.size() < 2) {
    pollfd p{v.a, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 10000), 1);
    ASSERT_TRUE(alone.receive().ok());
    while (alone.next(f, invalid)) got.push_back(f);
    ASSERT_FALSE(invalid);
    first_taken = !got.empty();
  }
  EXPECT_EQ(got[0].meta, "large");
  EXPECT_TRUE(got[0].body == large);
  EXPECT_EQ(got[1].kind, Kind::asgi_gone);
  EXPECT_EQ(got[1].meta, "small");
  EXPECT_EQ(got[1].body, "s");
  writer.join();

  SocketPair t;
  ASSERT_TRUE(write_frame(t.b, Kind::asgi_room, "whole", ""));
  const char half_header[8] = {static_cast<char>(Kind::asgi_room), 0, 0, 0, 5, 0, 0, 0};
  ASSERT_EQ(send(t.b, half_header, sizeof half_header, 0), 8);
  ::shutdown(t.b, SHUT_WR);
  FrameReader cut(t.a);
  ASSERT_TRUE(cut.receive().ok());  // a short read: it looks again when the socket says so
  EXPECT_EQ(cut.receive().status, ReadStatus::truncated);
  ASSERT_TRUE(cut.next(f, invalid));
  EXPECT_EQ(f.meta, "whole");
  EXPECT_FALSE(cut.next(f, invalid));
  EXPECT_FALSE(invalid);

  // Whole frames, then the end: closed, and the frames are still there.
  SocketPair u;
  ASSERT_TRUE(write_frame(u.b, Kind::asgi_room, "a", ""));
  ASSERT_TRUE(write_frame(u.b, Kind::asgi_gone, "b", "x"));
  ::shutdown(u.b, SHUT_WR);
  FrameReader ended(u.a);
  ASSERT_TRUE(ended.receive().ok());
  EXPECT_EQ(ended.receive().status, ReadStatus::closed);
  ASSERT_TRUE(ended.next(f, invalid));
  ASSERT_TRUE(ended.next(f, invalid));
  EXPECT_EQ(f.meta, "b");
  EXPECT_FALSE(ended.next(f, invalid));
}

// A frame over the limits (or of no kind) is refused from its header, before its body
// is waited for.
TEST(Frames, AFrameReaderRefusesAnOversizedFrameFromItsHeader) {
  SocketPair s;
  Limits limits;
  limits.max_body = 1000;
  FrameReader reader(s.a, limits);
  const char header[16] = {static_cast<char>(Kind::asgi_request), 0, 0, 0, 0, 0, 0, 0, 0x01, 0x04};  // body 1025
  ASSERT_EQ(send(s.b, header, sizeof header, 0), 16);
  ASSERT_TRUE(reader.receive().ok());
  Frame f;
  bool invalid = false;
  EXPECT_FALSE(reader.next(f, invalid));
  EXPECT_TRUE(invalid);

  SocketPair t;
  FrameReader other(t.a);
  const char no_kind[16] = {static_cast<char>(kLastKind + 1)};
  ASSERT_EQ(send(t.b, no_kind, sizeof no_kind, 0), 16);
  ASSERT_TRUE(other.receive().ok());
  EXPECT_FALSE(other.next(f, invalid));
  EXPECT_TRUE(invalid);
}

// drain(): what receive() took, each whole frame to the handler in order, and how the
// peer broke the protocol: a frame the handler refuses (none goes to it after), one of
// no kind, or the end.
TEST(Frames, AFrameReaderDrainsFramesInOrderAndSaysHowThePeerBrokeTheProtocol) {
  SocketPair s;
  FrameReader reader(s.a);
  for (const char* meta : {"one", "two", "bad", "four"}) {
    ASSERT_TRUE(write_frame(s.b, Kind::asgi_done, meta, ""));
  }
  std::vector<std::string> seen;
  FrameReader::Drained d = reader.drain([&](Frame& f) {
    seen.push_back(f.meta);
    return f.meta != "bad";
  });
  EXPECT_TRUE(d.got.ok());
  EXPECT_EQ(d.broken, "a malformed frame");
  EXPECT_EQ(seen, (std::vector<std::string>{"one", "two", "bad"}));

  SocketPair t;
  FrameReader other(t.a);
  ASSERT_TRUE(write_frame(t.b, Kind::asgi_done, "ok", ""));
  const char no_kind[16] = {static_cast<char>(kLastKind + 1)};
  ASSERT_EQ(send(t.b, no_kind, sizeof no_kind, 0), 16);
  seen.clear();
  d = other.drain([&](Frame& f) {
    seen.push_back(f.meta);
    return true;
  });
  EXPECT_EQ(d.broken, "a frame of no kind or over the limits");
  EXPECT_EQ(seen, (std::vector<std::string>{"ok"}));

  SocketPair u;
  FrameReader ended(u.a);
  ASSERT_TRUE(write_frame(u.b, Kind::asgi_done, "last", ""));
  ::shutdown(u.b, SHUT_WR);
  seen.clear();
  const auto handle = [&](Frame& f) {
    seen.push_back(f.meta);
    return true;
  };
  d = ended.drain(handle);  // the frame (the end is seen at the next look)
  d = d.got.ok() ? ended.drain(handle) : d;
  EXPECT_TRUE(d.broken.empty());
  EXPECT_EQ(d.got.status, ReadStatus::closed);
  EXPECT_EQ(seen, (std::vector<std::string>{"last"}));
}

// A worker's lane: the server's `cancel` for an answer the worker had ended already,
// then the next request, both in the socket before the worker reads again.
TEST(Frames, AStaleCancelAndTheNextRequestAreTwoFrames) {
  SocketPair s;
  HttpRequestData request = sample_request();
  ASSERT_TRUE(write_frame(s.b, Kind::cancel, "", ""));
  ASSERT_TRUE(write_frame(s.b, Kind::request, encode_request_meta(3, request), request.body));
  std::string carry;
  Frame f;
  ASSERT_TRUE(read_frame_buffered(s.a, f, carry).ok());
  EXPECT_EQ(f.kind, Kind::cancel);
  ASSERT_TRUE(read_frame_buffered(s.a, f, carry).ok());
  EXPECT_EQ(f.kind, Kind::request);
  std::size_t route = 0;
  HttpRequestData decoded;
  ASSERT_TRUE(decode_request_meta(f.meta, route, decoded));
  EXPECT_EQ(route, 3u);
  EXPECT_EQ(decoded.path, request.path);
  EXPECT_EQ(f.body, request.body);
  EXPECT_TRUE(carry.empty());
}

namespace {
extern "C" void ignore_signal(int) {}
}  // namespace

// SIGTERM in a worker: with `stop` set, a signal ends the wait for the next frame;
// without it (or with *stop clear) the wait goes on.
TEST(Frames, ABufferedReadEndsAtASignalOnlyWhenTold) {
  struct sigaction action {}, old {};
  action.sa_handler = ignore_signal;  // no SA_RESTART: recv returns EINTR
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &action, &old), 0);
  for (const bool told : {true, false}) {
    SocketPair s;
    volatile std::sig_atomic_t stop = 0;
    std::atomic<bool> returned{false};
    frames::ReadResult read;
    std::thread reader([&] {
      std::string carry;
      Frame f;
      read = read_frame_buffered(s.a, f, carry, {}, &stop);
      returned = true;
    });
    stop = told ? 1 : 0;
    // Again and again: a signal that lands before the reader is in recv interrupts nothing.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(told ? 5 : 0) +
                       std::chrono::milliseconds(200);
    while (!returned && std::chrono::steady_clock::now() < until) {
      pthread_kill(reader.native_handle(), SIGUSR1);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(returned.load(), told);
    // EXPECT, not ASSERT: the reader must be joined whatever happens.
    if (!told) EXPECT_TRUE(write_frame(s.b, Kind::cancel, "", ""));
    reader.join();
    if (told) {
      EXPECT_EQ(read.status, ReadStatus::failed);
      EXPECT_EQ(read.error, EINTR);
    } else {
      EXPECT_TRUE(read.ok());
    }
  }
  sigaction(SIGUSR1, &old, nullptr);
}

TEST(Frames, AnAsgiRequestCarriesItsIdAndTimeLeft) {
  HttpRequestData r;
  r.method = "POST";
  r.path = "/x";
  r.target = "/x?a=1";
  r.query_string = "a=1";
  r.headers = {{"b", "2"}, {"a", "1"}, {"b", "3"}};
  const std::string meta = encode_asgi_request(77, std::chrono::microseconds(1500000), 0, r);
  std::uint64_t id = 0;
  std::chrono::microseconds left{};
  std::size_t route = 9;
  HttpRequestData back;
  ASSERT_TRUE(decode_asgi_request(meta, id, left, route, back));
  EXPECT_EQ(id, 77u);
  EXPECT_EQ(left.count(), 1500000);
  EXPECT_EQ(route, 0u);
  EXPECT_EQ(back.target, "/x?a=1");
  ASSERT_EQ(back.headers.size(), 3u);  // in their order, duplicates kept
  EXPECT_EQ(back.headers[2].value, "3");
  // Anything cut short is refused.
  for (std::size_t n = 0; n < meta.size(); n += 7) {
    EXPECT_FALSE(decode_asgi_request(std::string_view(meta).substr(0, n), id, left, route, back)) << n;
  }
  std::string_view tagged = "";
  EXPECT_FALSE(untag(tagged, id));
  const std::string t = tag(5, "rest");
  std::string_view view = t;
  ASSERT_TRUE(untag(view, id));
  EXPECT_EQ(id, 5u);
  EXPECT_EQ(view, "rest");
}

TEST(Frames, AnOutboxWritesInOrderWithoutBlockingThePoster) {
  SocketPair s;
  auto outbox = std::make_shared<Outbox>(s.a);
  const std::string big(2 * 1024 * 1024, 'b');  // more than the socket holds: post() returns anyway
  const auto started = std::chrono::steady_clock::now();
  outbox->post(Kind::asgi_chunk, tag(1), big);
  for (std::uint64_t i = 2; i <= 50; ++i) outbox->post(Kind::asgi_done, tag(i));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(500));
  std::string carry;
  Frame f;
  ASSERT_TRUE(read_frame_buffered(s.b, f, carry).ok());
  EXPECT_EQ(f.kind, Kind::asgi_chunk);
  EXPECT_TRUE(f.body == big);
  for (std::uint64_t i = 2; i <= 50; ++i) {
    ASSERT_TRUE(read_frame_buffered(s.b, f, carry).ok());
    std::string_view meta = f.meta;
    std::uint64_t id = 0;
    ASSERT_TRUE(untag(meta, id));
    EXPECT_EQ(id, i);
  }
  outbox->close();
  EXPECT_FALSE(outbox->failed());
  // A peer that is gone: the write fails, later posts are dropped, close() returns.
  SocketPair t;
  auto lost = std::make_shared<Outbox>(t.a);
  close(t.b);
  t.b = -1;
  for (int i = 0; i < 10; ++i) lost->post(Kind::asgi_done, tag(1));
  lost->close();
  EXPECT_TRUE(lost->failed());
}

// What post_later() holds back stays off the socket until the next post() (ahead of its
// frame, in one write), flush() or close(), and always in the order posted.
TEST(Frames, AnOutboxHoldsBackLaterFramesUntilTheNextPostFlushOrClose) {
  SocketPair s;
  auto outbox = std::make_shared<Outbox>(s.a);
  auto readable = [&] {
    pollfd p{s.b, POLLIN, 0};
    return ::poll(&p, 1, 50) == 1;
  };
  auto next_id = [&](std::string& carry, Kind kind) {
    Frame f;
    EXPECT_TRUE(read_frame_buffered(s.b, f, carry).ok());
    EXPECT_EQ(f.kind, kind);
    std::string_view meta = f.meta;
    std::uint64_t id = 0;
    EXPECT_TRUE(untag(meta, id));
    return id;
  };
  std::string carry;

  outbox->post_later(Kind::asgi_done, tag(1));
  outbox->post_later(Kind::asgi_done, tag(2));
  EXPECT_FALSE(readable()) << "a held-back frame was written before anything asked for it";
  const std::string response_meta = tag(3, encode_response_meta(HttpResponseData{}));
  outbox->post(Kind::asgi_response, response_meta, "body");
  char all[4096];
  const ssize_t got = ::recv(s.b, all, sizeof all, MSG_PEEK | MSG_DONTWAIT);
  const std::size_t three_frames = 3 * 16 + tag(1).size() + tag(2).size() + response_meta.size() + 4;
  EXPECT_EQ(got, static_cast<ssize_t>(three_frames)) << "the held-back frames and the post did not go in one write";
  EXPECT_EQ(next_id(carry, Kind::asgi_done), 1u);
  EXPECT_EQ(next_id(carry, Kind::asgi_done), 2u);
  EXPECT_EQ(next_id(carry, Kind::asgi_response), 3u);

  outbox->post_later(Kind::asgi_done, tag(4));
  EXPECT_FALSE(readable());
  outbox->flush();
  ASSERT_TRUE(readable());
  EXPECT_EQ(next_id(carry, Kind::asgi_done), 4u);
  outbox->flush();  // nothing held: nothing written
  EXPECT_FALSE(readable());

  outbox->post_later(Kind::asgi_done, tag(5));
  outbox->close();
  ASSERT_TRUE(readable());
  EXPECT_EQ(next_id(carry, Kind::asgi_done), 5u);
  EXPECT_FALSE(outbox->failed());
}

// post() writes a frame itself when nothing waits, and leaves the rest of one the socket
// would not take at once to the thread: with several posters and a reader that keeps
// up only now and then, every frame arrives whole and each poster's in its order.
TEST(Frames, AnOutboxKeepsFramesWholeAndInOrderWhetherPostedOrThreadWritten) {
  SocketPair s;
  auto outbox = std::make_shared<Outbox>(s.a);
  constexpr int kPosters = 4;
  constexpr std::uint64_t kEach = 200;
  auto body_of = [](int poster, std::uint64_t i) {
    const std::size_t size = (i % 5 == 0) ? 320 * 1024 : (i * 37) % 3000;  // some past what the socket holds
    return std::string(size, static_cast<char>('a' + (poster * 7 + static_cast<int>(i)) % 26));
  };
  std::vector<std::thread> posters;
  for (int p = 0; p < kPosters; ++p) {
    posters.emplace_back([&, p] {
      for (std::uint64_t i = 0; i < kEach; ++i) {
        outbox->post(Kind::asgi_chunk, tag(static_cast<std::uint64_t>(p) << 32 | i), body_of(p, i));
      }
    });
  }
  std::vector<std::uint64_t> next(kPosters, 0);
  std::string carry;
  Frame f;
  for (std::uint64_t n = 0; n < kPosters * kEach; ++n) {
    if (n % 150 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // let the socket fill
    ASSERT_TRUE(read_frame_buffered(s.b, f, carry).ok()) << n;
    ASSERT_EQ(f.kind, Kind::asgi_chunk);
    std::string_view meta = f.meta;
    std::uint64_t id = 0;
    ASSERT_TRUE(untag(meta, id));
    const int poster = static_cast<int>(id >> 32);
    const std::uint64_t i = id & 0xffffffffu;
    ASSERT_LT(poster, kPosters);
    ASSERT_EQ(i, next[static_cast<std::size_t>(poster)]++) << "poster " << poster;
    ASSERT_TRUE(f.body == body_of(poster, i)) << "poster " << poster << " frame " << i;
  }
  for (auto& t : posters) t.join();
  outbox->close();
  EXPECT_FALSE(outbox->failed());
}

TEST(Frames, EndOfStreamAtAndInsideAFrame) {
  {
    SocketPair s;
    close(s.a);
    s.a = -1;
    Frame f;
    EXPECT_EQ(read_frame(s.b, f).status, ReadStatus::closed);
  }
  {
    SocketPair s;
    ASSERT_TRUE(write_frame(s.a, Kind::response, "meta", std::string(1000, 'x')));
    // Take the frame apart: leave only part of it in the socket.
    char buf[600];
    ASSERT_EQ(recv(s.b, buf, sizeof buf, 0), static_cast<ssize_t>(sizeof buf));
    SocketPair t;
    ASSERT_EQ(send(t.a, buf, sizeof buf, 0), static_cast<ssize_t>(sizeof buf));
    close(t.a);
    t.a = -1;
    Frame f;
    EXPECT_EQ(read_frame(t.b, f).status, ReadStatus::truncated);
  }
}

TEST(Frames, OversizedOrUnknownFramesAreInvalid) {
  SocketPair s;
  Limits limits;
  limits.max_body = 10;
  ASSERT_TRUE(write_frame(s.a, Kind::request, "", std::string(11, 'x')));
  Frame f;
  EXPECT_EQ(read_frame(s.b, f, limits).status, ReadStatus::invalid);

  SocketPair t;
  const char header[16] = {static_cast<char>(kLastKind + 1), 0, 0, 0};  // a kind past the last
  ASSERT_EQ(send(t.a, header, sizeof header, 0), 16);
  EXPECT_EQ(read_frame(t.b, f).status, ReadStatus::invalid);
}

TEST(Frames, ControlMessageCarriesJsonAndADescriptor) {
  SocketPair s(SOCK_SEQPACKET);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const int pass[] = {pipe_fds[1]};
  ASSERT_TRUE(send_control(s.a, {{"type", "spawned"}, {"worker", 3}, {"pid", 1234}}, pass));
  close(pipe_fds[1]);
  ControlMessage m;
  ASSERT_TRUE(receive_control(s.b, m));
  EXPECT_EQ(m.body.value("type", ""), "spawned");
  EXPECT_EQ(m.body.value("worker", -1), 3);
  ASSERT_EQ(m.fds.size(), 1u);
  ASSERT_EQ(write(m.fds[0], "hi", 2), 2);  // the received descriptor is the pipe's write end
  EXPECT_EQ(fcntl(m.fds[0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  m.close_fds();
  char got[2];
  ASSERT_EQ(read(pipe_fds[0], got, 2), 2);
  EXPECT_EQ(std::string(got, 2), "hi");
  close(pipe_fds[0]);

  ASSERT_TRUE(send_control(s.a, {{"type", "stop"}}));
  ASSERT_TRUE(receive_control(s.b, m));
  EXPECT_TRUE(m.fds.empty());
  close(s.a);
  s.a = -1;
  std::string error;
  EXPECT_FALSE(receive_control(s.b, m, &error));
  EXPECT_EQ(error, "end of stream");
}

// A worker with --threads 256 has 257 sockets: more than one SEQPACKET message
// may carry (the kernel's limit is 253). They arrive together, in order.
TEST(Frames, ControlMessageCarriesMoreDescriptorsThanOneMessageHolds) {
  SocketPair s(SOCK_SEQPACKET);
  const std::size_t count = 2 * kMaxFdsPerMessage + 7;
  std::vector<int> read_ends, write_ends;
  for (std::size_t i = 0; i < count; ++i) {
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    read_ends.push_back(p[0]);
    write_ends.push_back(p[1]);
  }
  std::thread sender([&] {
    EXPECT_TRUE(send_control(s.a, {{"type", "spawned"}, {"lanes", count}}, write_ends));
    EXPECT_TRUE(send_control(s.a, {{"type", "exited"}}));
  });
  ControlMessage m;
  ASSERT_TRUE(receive_control(s.b, m));
  sender.join();
  EXPECT_EQ(m.body.value("type", ""), "spawned");
  ASSERT_EQ(m.fds.size(), count);
  for (std::size_t i = 0; i < count; ++i) {
    const char c = static_cast<char>('a' + i % 26);
    ASSERT_EQ(write(m.fds[i], &c, 1), 1);
    char got = 0;
    ASSERT_EQ(read(read_ends[i], &got, 1), 1);
    EXPECT_EQ(got, c) << "descriptor " << i << " is not the one sent in that place";
  }
  m.close_fds();
  ASSERT_TRUE(receive_control(s.b, m));  // the next message is whole, and carries none
  EXPECT_EQ(m.body.value("type", ""), "exited");
  EXPECT_TRUE(m.fds.empty());
  for (int fd : read_ends) close(fd);
  for (int fd : write_ends) close(fd);
}

// Descriptors that went ahead of a message that never came are closed, not leaked.
TEST(Frames, DescriptorsAheadOfALostMessageAreClosed) {
  auto open_fds = [] {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) n += e.is_symlink() ? 1 : 0;
    return n;
  };
  SocketPair s(SOCK_SEQPACKET);
  const int before = open_fds();
  std::vector<int> fds;
  for (std::size_t i = 0; i < 3; ++i) fds.push_back(dup(0));
  ASSERT_TRUE(send_control(s.a, {{"type", "fds"}}, fds));  // "more to come", then nothing
  for (int fd : fds) close(fd);
  close(s.a);
  s.a = -1;
  ControlMessage m;
  std::string error;
  EXPECT_FALSE(receive_control(s.b, m, &error));
  EXPECT_EQ(error, "end of stream");
  EXPECT_TRUE(m.fds.empty());
  EXPECT_EQ(open_fds(), before - 1);  // the closed s.a; none of the three left open
}

TEST(Frames, WorkerControlRoundTripsAndRejectsGarbage) {
  const WorkerControl in{WorkerControlKind::interrupt, 7, 123456789012345ull};
  const std::string bytes = encode_worker_control(in);
  ASSERT_EQ(bytes.size(), kWorkerControlSize);
  WorkerControl out;
  ASSERT_TRUE(decode_worker_control(bytes, out));
  EXPECT_EQ(out.kind, WorkerControlKind::interrupt);
  EXPECT_EQ(out.lane, 7u);
  EXPECT_EQ(out.number, 123456789012345ull);
  EXPECT_FALSE(decode_worker_control(bytes.substr(0, 15), out));
  EXPECT_FALSE(decode_worker_control(bytes + "x", out));
  std::string bad_kind = bytes;
  bad_kind[0] = 9;
  EXPECT_FALSE(decode_worker_control(bad_kind, out));
  EXPECT_FALSE(decode_worker_control(encode_worker_control({WorkerControlKind::interrupt, 1, 0}), out));

  SocketPair s(SOCK_SEQPACKET);
  ASSERT_EQ(send(s.a, "garbage", 7, 0), 7);  // skipped by the reader
  ASSERT_TRUE(send_worker_control(s.a, in));
  ASSERT_TRUE(receive_worker_control(s.b, out));
  EXPECT_EQ(out.lane, 7u);
  EXPECT_EQ(out.number, in.number);
  close(s.a);
  s.a = -1;
  EXPECT_FALSE(receive_worker_control(s.b, out));
}

// The pool's supervisor sends interrupts: it must never wait for a worker whose
// control thread is behind.
TEST(Frames, SendingWorkerControlNeverBlocks) {
  SocketPair s(SOCK_SEQPACKET);
  int sent = 0;
  while (send_worker_control(s.a, {WorkerControlKind::interrupt, 0, 1}) && sent < 1000000) ++sent;
  EXPECT_GT(sent, 0);
  EXPECT_LT(sent, 1000000);
  EXPECT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
  WorkerControl out;
  ASSERT_TRUE(receive_worker_control(s.b, out));  // the ones sent are whole
  EXPECT_EQ(out.number, 1u);
}

TEST(Frames, PathParamsAndConnectionRoundTrip) {
  HttpRequestData in = sample_request();
  in.path_params = {{"item_id", "42", PathParam::Converter::integer},
                    {"rest", "a/b", PathParam::Converter::path},
                    {"empty", "", PathParam::Converter::string}};
  in.target = "/echo/caf%C3%A9?a=1";
  in.http_version = "HTTP/1.0";
  in.scheme = "https";
  in.remote_addr = "::1";
  in.remote_port = 65535;
  in.server_addr = "127.0.0.1";
  in.server_port = 8080;
  const std::string meta = encode_request_meta(3, in);
  std::size_t route = 0;
  HttpRequestData out;
  ASSERT_TRUE(decode_request_meta(meta, route, out));
  ASSERT_EQ(out.path_params.size(), 3u);
  EXPECT_EQ(out.path_params[0].name, "item_id");
  EXPECT_EQ(out.path_params[0].value, "42");
  EXPECT_EQ(out.path_params[0].converter, PathParam::Converter::integer);
  EXPECT_EQ(out.path_params[1].converter, PathParam::Converter::path);
  EXPECT_EQ(out.path_params[2].value, "");
  EXPECT_EQ(out.target, in.target);
  EXPECT_EQ(out.http_version, "HTTP/1.0");
  EXPECT_EQ(out.scheme, "https");
  EXPECT_EQ(out.remote_addr, "::1");
  EXPECT_EQ(out.remote_port, 65535);
  EXPECT_EQ(out.server_addr, "127.0.0.1");
  EXPECT_EQ(out.server_port, 8080);
}

TEST(Frames, RequestMetaWithABadConverterOrPortIsRejected) {
  HttpRequestData in = sample_request();
  in.path_params = {{"x", "1", PathParam::Converter::integer}};
  std::string meta = encode_request_meta(0, in);
  // The converter is the u32 right after the parameter's value: make it unknown.
  const std::string value_then_converter = std::string("\x01\0\0\0", 4) + "1" + std::string("\x01\0\0\0", 4);
  const auto at = meta.find(value_then_converter);
  ASSERT_NE(at, std::string::npos);
  std::string bad = meta;
  bad[at + 5] = 9;
  std::size_t route = 0;
  HttpRequestData out;
  EXPECT_FALSE(decode_request_meta(bad, route, out));
  // Every truncation of valid metadata is rejected, never read past.
  for (std::size_t cut = 0; cut < meta.size(); ++cut) {
    HttpRequestData partial;
    EXPECT_FALSE(decode_request_meta(std::string_view(meta).substr(0, cut), route, partial)) << cut;
  }
}

// The processes strategy's zygote gets the options as JSON on its command line.
TEST(Frames, AWebSocketCloseRoundTripsAndRejectsGarbage) {
  int code = 0;
  std::string reason;
  ASSERT_TRUE(decode_ws_close(encode_ws_close(4001, "caf\xc3\xa9 bye"), code, reason));
  EXPECT_EQ(code, 4001);
  EXPECT_EQ(reason, "caf\xc3\xa9 bye");
  ASSERT_TRUE(decode_ws_close(encode_ws_close(1000, ""), code, reason));
  EXPECT_EQ(code, 1000);
  EXPECT_EQ(reason, "");
  for (const char* bad : {"", "1000", "abc reason", "999 low", "5000 high", "10x0 r", "-1000 r"}) {
    EXPECT_FALSE(decode_ws_close(bad, code, reason)) << bad;
  }
}

TEST(WholeInteger, TakesOnlyAWholeDecimalNumber) {
  using gilgamesh::whole_integer;
  EXPECT_EQ(whole_integer("8080"), 8080);
  EXPECT_EQ(whole_integer("-3"), -3);
  EXPECT_EQ(whole_integer("0"), 0);
  for (const char* bad : {"", "80x", " 80", "+80", "0x10", "99999999999999999999", "-"}) {
    EXPECT_FALSE(whole_integer(bad).has_value()) << bad;
  }
}

TEST(ServerConfigJson, RoundTripsEveryField) {
  gilgamesh::ServerConfig c;
  c.pool.strategy = gilgamesh::Strategy::processes;
  c.pool.workers = 7;
  c.app.target = "mod:app";
  c.app.kind = gilgamesh::AppKind::wsgi;
  c.app.root_path = "/api";
  c.app.loop = gilgamesh::EventLoop::uvloop;
  c.app.max_response = 12345;
  c.app.pythonpath = {"/a", "/b c"};
  c.pool.max_queue = 9;
  c.http.max_body = 99;
  c.http.uds = "/run/app.sock";
  c.pool.max_requests = 5;
  c.pool.max_requests_jitter = 2;
  c.pool.max_abandoned = 3;
  c.pool.allow_gil = true;
  c.pool.python_build = gilgamesh::PythonBuild::free_threaded;
  c.http.ws_max_message = 4096;
  c.http.ws_ping_interval = 0.5;
  const nlohmann::json sent = c;
  const auto back = nlohmann::json::parse(sent.dump()).get<gilgamesh::ServerConfig>();
  EXPECT_EQ(nlohmann::json(back), sent);
  EXPECT_EQ(back.app.pythonpath, c.app.pythonpath);
  EXPECT_EQ(back.app.root_path, "/api");
  EXPECT_EQ(back.app.kind, gilgamesh::AppKind::wsgi);
  EXPECT_EQ(back.app.loop, gilgamesh::EventLoop::uvloop);
  EXPECT_EQ(back.pool.python_build, gilgamesh::PythonBuild::free_threaded);
}

TEST(FileFrame, TheDescriptorComesWithTheFrameAndTheMetaRoundTrips) {
  SocketPair s;
  HttpResponseData head;
  head.status = 200;
  head.headers = {{"Content-Type", "application/pdf"}, {"Content-Length", "42"}};
  char name[] = "/tmp/gilgamesh-file-frame-XXXXXX";
  const int file = ::mkstemp(name);
  ASSERT_GE(file, 0);
  ::unlink(name);
  ASSERT_EQ(::write(file, "0123456789", 10), 10);
  // A response first, so the file frame may come in the same read as what precedes it.
  ASSERT_TRUE(write_frame(s.a, Kind::response, encode_response_meta(head), "body"));
  ASSERT_TRUE(write_frame_with_fd(s.a, Kind::file, encode_file_meta(head, 7, 42), file));
  ::close(file);  // the receiver's copy keeps the file
  std::string carry;
  std::deque<Fd> passed;
  Frame f;
  ASSERT_TRUE(read_frame_buffered(s.b, f, carry, {}, nullptr, &passed).ok());
  EXPECT_EQ(f.kind, Kind::response);
  ASSERT_TRUE(read_frame_buffered(s.b, f, carry, {}, nullptr, &passed).ok());
  EXPECT_EQ(f.kind, Kind::file);
  EXPECT_TRUE(f.body.empty());
  HttpResponseData back;
  std::uint64_t offset = 0, length = 0;
  ASSERT_TRUE(decode_file_meta(f.meta, back, offset, length));
  EXPECT_EQ(offset, 7u);
  EXPECT_EQ(length, 42u);
  EXPECT_EQ(back.headers.size(), 2u);
  ASSERT_EQ(passed.size(), 1u);
  char got[4] = {};
  ASSERT_EQ(::pread(passed.front().fd, got, 3, 7), 3);
  EXPECT_EQ(std::string(got, 3), "789");
  EXPECT_FALSE(decode_file_meta(std::string_view(f.meta).substr(0, 15), back, offset, length));
}

TEST(FileFrame, AReaderThatTakesNoDescriptorsLeavesNoneOpen) {
  SocketPair s;
  const int before = [] {
    int n = 0;
    for (int fd = 0; fd < 1024; ++fd) n += ::fcntl(fd, F_GETFD) >= 0;
    return n;
  }();
  const int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  ASSERT_TRUE(write_frame_with_fd(s.a, Kind::file, encode_file_meta(HttpResponseData{}, 0, 0), file));
  ::close(file);
  std::string carry;
  Frame f;
  ASSERT_TRUE(read_frame_buffered(s.b, f, carry).ok());  // recv(): the kernel closes what came with it
  int after = 0;
  for (int fd = 0; fd < 1024; ++fd) after += ::fcntl(fd, F_GETFD) >= 0;
  EXPECT_EQ(after, before);
}

TEST(FileFrame, OnAFullSocketTheFrameWaitsAndGoesWholeWithItsOneDescriptor) {
  // The server's reactor makes its end of a worker's socket non-blocking, so the worker's
  // blocking writes meet EAGAIN: the frame waits for room, goes in as many parts as the socket
  // takes, and its descriptor goes once, with the first byte.
  SocketPair s;
  ASSERT_EQ(::fcntl(s.a, F_SETFL, ::fcntl(s.a, F_GETFL) | O_NONBLOCK), 0);
  const std::string filler(64 * 1024, 'x');
  std::size_t queued = 0;
  for (;;) {
    const ssize_t n = ::send(s.a, filler.data(), filler.size(), MSG_NOSIGNAL);
    if (n < 0) {
      ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
      break;
    }
    queued += static_cast<std::size_t>(n);
  }
  ASSERT_GT(queued, 0u);
  HttpResponseData head;
  head.status = 200;
  head.headers = {{"X-Large", std::string(512 * 1024, 'v')}};  // more than the socket holds at once
  const std::string meta = encode_file_meta(head, 3, 5);
  // The reader takes every descriptor that comes, with whichever bytes (read_frame_buffered's
  // large-frame reads take none: the kernel would close a second one unseen).
  std::string frame;
  std::vector<int> passed;
  std::thread reader([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the writer meets a full socket first
    std::string buf(64 * 1024, '\0');
    for (std::size_t left = queued; left > 0;) {
      const ssize_t n = ::recv(s.b, buf.data(), std::min(left, buf.size()), 0);
      if (n <= 0) return;
      left -= static_cast<std::size_t>(n);
    }
    const std::size_t whole = 16 + meta.size();  // the frame's header, then its meta
    while (frame.size() < whole) {
      iovec iov{buf.data(), std::min(buf.size(), whole - frame.size())};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const ssize_t n = ::recvmsg(s.b, &msg, MSG_CMSG_CLOEXEC);
      if (n <= 0) return;
      frame.append(buf.data(), static_cast<std::size_t>(n));
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
          int fd = -1;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          passed.push_back(fd);
        }
      }
    }
  });
  const int file = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  int error = 0;
  const bool sent = write_frame_with_fd(s.a, Kind::file, meta, file, &error);
  ::close(file);
  reader.join();
  ASSERT_TRUE(sent) << std::strerror(error);
  ASSERT_EQ(frame.size(), 16 + meta.size());
  EXPECT_EQ(frame[0], static_cast<char>(Kind::file));
  EXPECT_TRUE(frame.compare(16, std::string::npos, meta) == 0);
  EXPECT_EQ(passed.size(), 1u) << "the descriptor must come once, with the first byte";
  for (int fd : passed) ::close(fd);
}

// An ASGI worker process's answer with a file (http.response.pathsend): the Outbox posts an
// asgi_file frame with the descriptor, behind frames it held back and, the second time,
// behind a frame the socket could not take at once (its thread writes it); the server's
// FrameReader gives each frame whole and each descriptor in the frames' order.
TEST(FileFrame, AnOutboxPostsDescriptorsAndAFrameReaderGivesThemInOrder) {
  SocketPair s;
  auto outbox = std::make_shared<Outbox>(s.a);
  auto temp_file = [](const std::string& content) {
    char name[] = "/tmp/gilgamesh-asgi-file-XXXXXX";
    const int fd = ::mkstemp(name);
    ::unlink(name);
    EXPECT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
    return Fd(fd);
  };
  HttpResponseData head;
  head.status = 200;
  head.headers = {{"Content-Type", "text/plain"}};
  outbox->post_later(Kind::asgi_done, tag(1));  // goes ahead of the file frame, in its write
  outbox->post_with_fd(Kind::asgi_file, tag(2, encode_file_meta(head, 0, 5)), temp_file("first"));
  outbox->post(Kind::asgi_chunk, tag(3), std::string(4 << 20, 'c'));  // more than the socket takes
  outbox->post_with_fd(Kind::asgi_file, tag(4, encode_file_meta(head, 1, 5)), temp_file("second"));
  outbox->post(Kind::asgi_done, tag(5));

  FrameReader reader(s.b);
  std::vector<std::pair<std::uint64_t, std::string>> files;  // id, what its descriptor reads
  std::vector<std::uint64_t> order;
  for (int rounds = 0; order.size() < 5 && rounds < 2000; ++rounds) {
    pollfd p{s.b, POLLIN, 0};
    ASSERT_GE(::poll(&p, 1, 5000), 0);
    const FrameReader::Drained d = reader.drain([&](Frame& f) {
      std::string_view meta = f.meta;
      std::uint64_t id = 0;
      if (!untag(meta, id)) return false;
      order.push_back(id);
      if (f.kind != Kind::asgi_file) return true;
      HttpResponseData back;
      std::uint64_t offset = 0, length = 0;
      if (!decode_file_meta(meta, back, offset, length)) return false;
      Fd fd = reader.take_passed();
      std::string got(length, '\0');
      const ssize_t n = fd.fd >= 0 ? ::pread(fd.fd, got.data(), length, static_cast<off_t>(offset)) : -1;
      got.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
      files.emplace_back(id, got);
      return true;
    });
    ASSERT_TRUE(d.got.ok() && d.broken.empty()) << d.broken;
  }
  EXPECT_EQ(order, (std::vector<std::uint64_t>{1, 2, 3, 4, 5}));
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], (std::pair<std::uint64_t, std::string>{2, "first"}));
  EXPECT_EQ(files[1], (std::pair<std::uint64_t, std::string>{4, "econd"}));
  EXPECT_EQ(reader.take_passed().fd, -1) << "one descriptor came per file frame";
  outbox->close();
  EXPECT_FALSE(outbox->failed());
}

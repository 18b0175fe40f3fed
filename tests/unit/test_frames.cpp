// The wire of `--strategy processes`: metadata encoding, whole frames over a
// socketpair (small, 8 MiB, cut off, oversized), control messages with a fd.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

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
  const char header[16] = {9, 0, 0, 0};  // kind 9
  ASSERT_EQ(send(t.a, header, sizeof header, 0), 16);
  EXPECT_EQ(read_frame(t.b, f).status, ReadStatus::invalid);
}

TEST(Frames, ControlMessageCarriesJsonAndADescriptor) {
  SocketPair s(SOCK_SEQPACKET);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  ASSERT_TRUE(send_control(s.a, {{"type", "spawned"}, {"worker", 3}, {"pid", 1234}}, pipe_fds[1]));
  close(pipe_fds[1]);
  ControlMessage m;
  ASSERT_TRUE(receive_control(s.b, m));
  EXPECT_EQ(m.body.value("type", ""), "spawned");
  EXPECT_EQ(m.body.value("worker", -1), 3);
  ASSERT_GE(m.fd, 0);
  ASSERT_EQ(write(m.fd, "hi", 2), 2);  // the received descriptor is the pipe's write end
  close(m.fd);
  char got[2];
  ASSERT_EQ(read(pipe_fds[0], got, 2), 2);
  EXPECT_EQ(std::string(got, 2), "hi");
  close(pipe_fds[0]);

  ASSERT_TRUE(send_control(s.a, {{"type", "stop"}}));
  ASSERT_TRUE(receive_control(s.b, m));
  EXPECT_EQ(m.fd, -1);
  close(s.a);
  s.a = -1;
  std::string error;
  EXPECT_FALSE(receive_control(s.b, m, &error));
  EXPECT_EQ(error, "end of stream");
}

TEST(Frames, PathParamsAndConnectionRoundTrip) {
  HttpRequestData in = sample_request();
  in.path_params = {{"item_id", "42", PathParam::Converter::integer},
                    {"rest", "a/b", PathParam::Converter::path},
                    {"empty", "", PathParam::Converter::string}};
  in.target = "/echo/caf%C3%A9?a=1";
  in.http_version = "HTTP/1.0";
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
TEST(ServerConfigJson, RoundTripsEveryField) {
  gilgamesh::ServerConfig c;
  c.pool.strategy = gilgamesh::Strategy::processes;
  c.pool.workers = 7;
  c.app.target = "mod:app";
  c.app.kind = gilgamesh::AppKind::wsgi;
  c.app.root_path = "/api";
  c.app.max_response = 12345;
  c.app.pythonpath = {"/a", "/b c"};
  c.pool.max_queue = 9;
  c.http.max_body = 99;
  c.pool.max_requests = 5;
  c.pool.max_requests_jitter = 2;
  c.pool.max_abandoned = 3;
  c.pool.allow_gil = true;
  c.pool.python_build = gilgamesh::PythonBuild::free_threaded;
  const nlohmann::json sent = c;
  const auto back = nlohmann::json::parse(sent.dump()).get<gilgamesh::ServerConfig>();
  EXPECT_EQ(nlohmann::json(back), sent);
  EXPECT_EQ(back.app.pythonpath, c.app.pythonpath);
  EXPECT_EQ(back.app.root_path, "/api");
  EXPECT_EQ(back.app.kind, gilgamesh::AppKind::wsgi);
  EXPECT_EQ(back.pool.python_build, gilgamesh::PythonBuild::free_threaded);
}

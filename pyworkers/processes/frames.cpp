#include "pyworkers/processes/frames.hpp"

#include "server/model/app_forks.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <limits>
#include <new>

namespace gilgamesh::frames {

namespace {

constexpr std::size_t kHeaderSize = 16;
// A FrameReader's frame this large gets room of its own, given back once it is taken.
constexpr std::size_t kLargeFrame = std::size_t{1} << 20;

// --- metadata encoding: u32/u64 in host order, strings as u32 length + bytes ---

void put_u32(std::string& out, std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& out, std::uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void put_str(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}
void put_headers(std::string& out, const std::vector<Header>& headers) {
  put_u32(out, static_cast<std::uint32_t>(headers.size()));
  for (const Header& h : headers) {
    put_str(out, h.name);
    put_str(out, h.value);
  }
}

class MetaReader {
 public:
  explicit MetaReader(std::string_view data) : data_(data) {}
  bool u32(std::uint32_t& v) { return take(&v, 4); }
  bool u64(std::uint64_t& v) { return take(&v, 8); }
  bool str(std::string& s) {
    std::uint32_t n = 0;
    if (!u32(n) || n > data_.size()) return false;
    s.assign(data_.substr(0, n));
    data_.remove_prefix(n);
    return true;
  }
  bool headers(std::vector<Header>& out) {
    std::uint32_t n = 0;
    // Each header takes at least 8 bytes: a count beyond that is garbage.
    if (!u32(n) || n > data_.size() / 8) return false;
    out.resize(n);
    for (Header& h : out) {
      if (!str(h.name) || !str(h.value)) return false;
    }
    return true;
  }
  bool params(std::vector<PathParam>& out) {
    std::uint32_t n = 0;
    // Each parameter takes at least 12 bytes: a count beyond that is garbage.
    if (!u32(n) || n > data_.size() / 12) return false;
    out.resize(n);
    for (PathParam& p : out) {
      std::uint32_t converter = 0;
      if (!str(p.name) || !str(p.value) || !u32(converter) ||
          converter > static_cast<std::uint32_t>(PathParam::Converter::path)) {
        return false;
      }
      p.converter = static_cast<PathParam::Converter>(converter);
    }
    return true;
  }
  bool port(std::uint16_t& v) {
    std::uint32_t n = 0;
    if (!u32(n) || n > 65535) return false;
    v = static_cast<std::uint16_t>(n);
    return true;
  }
  bool done() const { return data_.empty(); }

 private:
  bool take(void* v, std::size_t n) {
    if (data_.size() < n) return false;
    std::memcpy(v, data_.data(), n);
    data_.remove_prefix(n);
    return true;
  }
  std::string_view data_;
};

// Reads exactly n bytes. Returns n, fewer at end of stream, or -1 (errno set).
ssize_t read_exact(int fd, char* buf, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
    } else if (r == 0) {
      break;
    } else if (errno != EINTR) {
      return -1;
    }
  }
  return static_cast<ssize_t>(got);
}

// A frame's 16-byte header, checked against `limits`.
struct Header {
  Kind kind = Kind::hello;
  std::uint32_t meta = 0;
  std::uint64_t body = 0;
  std::size_t size() const { return kHeaderSize + meta + static_cast<std::size_t>(body); }
};
bool check_header(const char* bytes, const Limits& limits, Header& out) {
  std::uint32_t kind = 0;
  std::memcpy(&kind, bytes, 4);
  std::memcpy(&out.meta, bytes + 4, 4);
  std::memcpy(&out.body, bytes + 8, 8);
  out.kind = static_cast<Kind>(kind);
  return kind >= 1 && kind <= kLastKind && out.meta <= limits.max_meta && out.body <= limits.max_body &&
         out.body <= std::numeric_limits<std::size_t>::max() - kHeaderSize - out.meta;
}

// A FrameReader's buffer: a whole header at `at` that the limits allow.
bool header_at(std::string_view in, std::size_t at, const Limits& limits, Header& out) {
  return in.size() - at >= kHeaderSize && check_header(in.data() + at, limits, out);
}

// The header checked, and `out` sized for the meta and body that follow.
ReadResult take_header(const char* header, const Limits& limits, Frame& out) {
  Header h;
  if (!check_header(header, limits, h)) return {ReadStatus::invalid};
  out.kind = h.kind;
  try {
    out.meta.resize(h.meta);
    out.body.resize(static_cast<std::size_t>(h.body));
  } catch (const std::bad_alloc&) {
    return {ReadStatus::failed, ENOMEM};
  }
  return {};
}

}  // namespace

std::string ReadResult::describe() const {
  switch (status) {
    case ReadStatus::ok: return "ok";
    case ReadStatus::closed: return "connection closed";
    case ReadStatus::truncated: return "connection closed in the middle of a frame";
    case ReadStatus::failed: return std::string("socket error: ") + std::strerror(error);
    case ReadStatus::invalid: return "malformed frame";
  }
  return "?";
}

namespace {

void put_header(char (&header)[kHeaderSize], Kind kind, std::size_t meta_size, std::size_t body_size) {
  const auto k = static_cast<std::uint32_t>(kind);
  const auto meta_len = static_cast<std::uint32_t>(meta_size);
  const auto body_len = static_cast<std::uint64_t>(body_size);
  std::memcpy(header, &k, 4);
  std::memcpy(header + 4, &meta_len, 4);
  std::memcpy(header + 8, &body_len, 8);
}

// `fds` as the SCM_RIGHTS of `msg`, in `control` (room for CMSG_SPACE of them).
void attach_rights(msghdr& msg, char* control, std::span<const int> fds) {
  const std::size_t bytes = sizeof(int) * fds.size();
  std::memset(control, 0, CMSG_SPACE(bytes));
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(bytes);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(bytes);
  std::memcpy(CMSG_DATA(c), fds.data(), bytes);
}

// Calls `each(fd)` for every descriptor that came with a received `msg` (SCM_RIGHTS).
template <typename Each>
void take_rights(msghdr& msg, Each&& each) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received = -1;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      each(received);
    }
  }
}

// Sends the pieces back to back, past their first `skip` bytes: all of them, or with
// MSG_DONTWAIT in `flags` as far as the socket takes them without waiting. With `pass_fd`,
// that descriptor goes with the first byte sent (SCM_RIGHTS). Returns the bytes sent so far
// (`skip` included), or -1 with errno when the socket failed.
ssize_t send_pieces(int fd, std::initializer_list<std::string_view> pieces, std::size_t skip, int flags,
                    int pass_fd = -1) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  std::array<iovec, 4> iov{};
  std::size_t count = 0;
  std::size_t total = skip;
  for (std::string_view piece : pieces) {
    const std::size_t from = std::min(skip, piece.size());
    skip -= from;
    if (from < piece.size()) iov[count++] = {const_cast<char*>(piece.data() + from), piece.size() - from};
  }
  iovec* next = iov.data();
  while (count > 0) {
    msghdr msg{};
    msg.msg_iov = next;
    msg.msg_iovlen = count;
    if (pass_fd >= 0) attach_rights(msg, control, std::span<const int>(&pass_fd, 1));
    const ssize_t n = ::sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if ((flags & MSG_DONTWAIT) != 0) break;
        // A blocking send on a socket made non-blocking by another of its descriptors
        // (the server's reactor watches a dup of a worker's socket): wait for room.
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, -1) >= 0 || errno == EINTR) continue;
      }
      return -1;
    }
    pass_fd = -1;  // went with the first byte
    auto sent = static_cast<std::size_t>(n);
    total += sent;
    while (count > 0 && sent >= next->iov_len) {
      sent -= next->iov_len;
      ++next;
      --count;
    }
    if (count > 0) {
      next->iov_base = static_cast<char*>(next->iov_base) + sent;
      next->iov_len -= sent;
    }
  }
  return static_cast<ssize_t>(total);
}

// Frame (kind, meta, body) after `prefix` (whole frames held back: Outbox::post_later), the
// same way.
ssize_t send_frame(int fd, std::string_view prefix, Kind kind, std::string_view meta, std::string_view body,
                   std::size_t skip, int flags, int pass_fd = -1) {
  char header[kHeaderSize];
  put_header(header, kind, meta.size(), body.size());
  return send_pieces(fd, {prefix, std::string_view(header, kHeaderSize), meta, body}, skip, flags, pass_fd);
}

// recv(), or with `passed` recvmsg() taking the descriptors that come with the bytes.
ssize_t receive(int fd, char* buf, std::size_t size, int flags, std::deque<Fd>* passed) {
  if (passed == nullptr) return ::recv(fd, buf, size, flags);
  iovec iov{buf, size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  take_rights(msg, [&](int received) { passed->emplace_back(received); });
  return n;
}

}  // namespace

bool write_frame_with_fd(int fd, Kind kind, std::string_view meta, int passed_fd, int* error) {
  app_forks::leave_if_forked();
  char header[kHeaderSize];
  put_header(header, kind, meta.size(), 0);
  if (send_pieces(fd, {std::string_view(header, kHeaderSize), meta}, 0, 0, passed_fd) >= 0) return true;
  if (error) *error = errno;
  return false;
}

bool write_frame(int fd, Kind kind, std::string_view meta, std::string_view body, int* error) {
  app_forks::leave_if_forked();  // a copy of a worker the app forked says nothing to the server
  if (send_frame(fd, {}, kind, meta, body, 0, 0) >= 0) return true;
  if (error) *error = errno;
  return false;
}

ReadResult read_frame(int fd, Frame& out, const Limits& limits) {
  // One recv usually brings the whole of a small frame (the sender wrote it
  // with one sendmsg); the rest of a large body is read straight into place.
  // For a peer whose frames alternate strictly (a worker's first frame), so a
  // read never takes bytes of the next frame.
  char first[16 * 1024];
  ssize_t got;
  do {
    got = ::recv(fd, first, sizeof first, 0);
  } while (got < 0 && errno == EINTR);
  if (got < 0) return {ReadStatus::failed, errno};
  if (got == 0) return {ReadStatus::closed};
  if (static_cast<std::size_t>(got) < kHeaderSize) {
    const ssize_t more = read_exact(fd, first + got, kHeaderSize - static_cast<std::size_t>(got));
    if (more < 0) return {ReadStatus::failed, errno};
    got += more;
    if (static_cast<std::size_t>(got) < kHeaderSize) return {ReadStatus::truncated};
  }

  if (ReadResult header = take_header(first, limits, out); !header.ok()) return header;
  // Frames alternate strictly: a recv that took bytes past this frame found a peer out of step.
  if (static_cast<std::size_t>(got) > kHeaderSize + out.meta.size() + out.body.size()) {
    return {ReadStatus::invalid};
  }
  std::string_view received(first + kHeaderSize, static_cast<std::size_t>(got) - kHeaderSize);
  for (std::string* part : {&out.meta, &out.body}) {
    const std::size_t have = std::min(received.size(), part->size());
    std::memcpy(part->data(), received.data(), have);
    received.remove_prefix(have);
    const std::size_t missing = part->size() - have;
    if (missing == 0) continue;
    const ssize_t n = read_exact(fd, part->data() + have, missing);
    if (n < 0) return {ReadStatus::failed, errno};
    if (static_cast<std::size_t>(n) < missing) return {ReadStatus::truncated};
  }
  return {ReadStatus::ok};
}

ReadResult read_frame_buffered(int fd, Frame& out, std::string& carry, const Limits& limits,
                               const volatile std::sig_atomic_t* stop, std::deque<Fd>* passed) {
  char buf[64 * 1024];
  while (carry.size() < kHeaderSize) {
    const ssize_t got = receive(fd, buf, sizeof buf, 0, passed);
    if (got < 0 && errno == EINTR && stop != nullptr && *stop && carry.empty()) {
      return {ReadStatus::failed, EINTR};
    }
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return {ReadStatus::failed, errno};
    if (got == 0) return {carry.empty() ? ReadStatus::closed : ReadStatus::truncated};
    carry.append(buf, static_cast<std::size_t>(got));
  }
  if (ReadResult header = take_header(carry.data(), limits, out); !header.ok()) return header;
  std::size_t pos = kHeaderSize;
  for (std::string* part : {&out.meta, &out.body}) {
    const std::size_t have = std::min(carry.size() - pos, part->size());
    std::memcpy(part->data(), carry.data() + pos, have);
    pos += have;
    if (have == part->size()) continue;
    // `carry` is used up: the rest of this part comes straight from the socket.
    const ssize_t more = read_exact(fd, part->data() + have, part->size() - have);
    if (more < 0) return {ReadStatus::failed, errno};
    if (static_cast<std::size_t>(more) < part->size() - have) return {ReadStatus::truncated};
  }
  carry.erase(0, pos);
  return {};
}

ReadResult FrameReader::receive(std::size_t budget) {
  char buf[64 * 1024];
  if (pos_ == in_.size()) {  // all taken: a large frame's room goes back
    if (in_.capacity() > kLargeFrame) in_ = std::string();
    in_.clear();
    pos_ = 0;
  } else if (pos_ > 0 && (pos_ * 2 >= in_.size() || in_.size() - pos_ >= sizeof buf)) {
    // What was taken goes once it is half the buffer, or at once before a large frame.
    in_.erase(0, pos_);
    pos_ = 0;
  }
  Header h;
  if (pos_ == 0 && header_at(in_, 0, limits_, h) && h.size() > kLargeFrame && in_.capacity() < h.size()) {
    in_.reserve(h.size());  // a large frame begun: room for it at once, not doubled past it
  }
  for (std::size_t taken = 0; taken < budget;) {
    const std::size_t want = std::min(sizeof buf, budget - taken);
    const ssize_t got = frames::receive(fd_, buf, want, MSG_DONTWAIT, &passed_);
    if (got > 0) {
      in_.append(buf, static_cast<std::size_t>(got));
      taken += static_cast<std::size_t>(got);
      if (static_cast<std::size_t>(got) < want) break;  // it held no more (the loop looks again when it does)
      continue;
    }
    if (got == 0) {  // the peer's end: inside a frame, or after whole ones only
      std::size_t at = pos_;
      while (header_at(in_, at, limits_, h) && in_.size() - at >= h.size()) at += h.size();
      return {at < in_.size() ? ReadStatus::truncated : ReadStatus::closed};
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    return {ReadStatus::failed, errno};
  }
  return {};
}

Fd FrameReader::take_passed() {
  if (passed_.empty()) return Fd();
  Fd out = std::move(passed_.front());
  passed_.pop_front();
  return out;
}

bool FrameReader::next(Frame& out, bool& invalid) {
  const std::size_t have = in_.size() - pos_;
  Header h;
  // The limits first, so that a frame too large is refused before it is waited for.
  if (!header_at(in_, pos_, limits_, h)) {
    invalid = have >= kHeaderSize;  // there, but refused
    return false;
  }
  invalid = false;
  if (have < h.size()) return false;
  const char* at = in_.data() + pos_ + kHeaderSize;
  out.kind = h.kind;
  out.meta.assign(at, h.meta);
  if (pos_ == 0 && have == h.size() && h.size() > kLargeFrame) {
    // A large frame alone in the buffer (receive() made it so): its bytes become the
    // body, not a copy of them.
    in_.erase(0, kHeaderSize + h.meta);
    out.body = std::move(in_);
    in_ = std::string();
    return true;
  }
  out.body.assign(at + h.meta, static_cast<std::size_t>(h.body));
  pos_ += h.size();
  return true;
}

FrameReader::Drained FrameReader::drain(const std::function<bool(Frame&)>& handle, std::size_t budget) {
  Drained d;
  try {
    d.got = receive(budget);
    Frame frame;
    bool invalid = false;
    while (d.broken.empty() && next(frame, invalid)) {
      if (!handle(frame)) d.broken = "a malformed frame";
    }
    if (invalid) d.broken = "a frame of no kind or over the limits";
  } catch (const std::bad_alloc&) {
    d.broken = "a frame too large for memory";
  }
  return d;
}

std::string encode_request_meta(std::size_t route_index, const HttpRequestData& r) {
  std::string out;
  out.reserve(128 + r.method.size() + r.path.size() + r.query_string.size() + r.request_id.size() +
              r.target.size() + r.headers.size() * 48 + r.path_params.size() * 32);
  put_u64(out, route_index);
  put_str(out, r.method);
  put_str(out, r.path);
  put_str(out, r.query_string);
  put_str(out, r.request_id);
  put_headers(out, r.headers);
  put_u32(out, static_cast<std::uint32_t>(r.path_params.size()));
  for (const PathParam& p : r.path_params) {
    put_str(out, p.name);
    put_str(out, p.value);
    put_u32(out, static_cast<std::uint32_t>(p.converter));
  }
  put_str(out, r.target);
  put_str(out, r.http_version);
  put_str(out, r.scheme);
  put_str(out, r.remote_addr);
  put_u32(out, r.remote_port);
  put_str(out, r.server_addr);
  put_u32(out, r.server_port);
  return out;
}

bool decode_request_meta(std::string_view meta, std::size_t& route_index, HttpRequestData& out) {
  MetaReader in(meta);
  std::uint64_t route = 0;
  if (!in.u64(route) || !in.str(out.method) || !in.str(out.path) || !in.str(out.query_string) ||
      !in.str(out.request_id) || !in.headers(out.headers) || !in.params(out.path_params) ||
      !in.str(out.target) || !in.str(out.http_version) || !in.str(out.scheme) || !in.str(out.remote_addr) ||
      !in.port(out.remote_port) || !in.str(out.server_addr) || !in.port(out.server_port)) {
    return false;
  }
  route_index = static_cast<std::size_t>(route);
  return in.done();
}

std::string encode_response_meta(const HttpResponseData& r) {
  std::string out;
  out.reserve(16 + r.content_type.size() + r.headers.size() * 48);
  put_u32(out, static_cast<std::uint32_t>(r.status));
  put_str(out, r.content_type);
  put_headers(out, r.headers);
  return out;
}

bool decode_response_meta(std::string_view meta, HttpResponseData& out) {
  MetaReader in(meta);
  std::uint32_t status = 0;
  if (!in.u32(status) || !in.str(out.content_type) || !in.headers(out.headers)) return false;
  // Carried as sent (bounded to an int): the HTTP layer refuses a bad status for
  // every strategy alike, with a 500, rather than treating it as a broken worker.
  out.status = static_cast<int>(std::min<std::uint32_t>(status, 1000));
  return in.done();
}

std::string encode_file_meta(const HttpResponseData& head, std::uint64_t offset, std::uint64_t length) {
  std::string out;
  put_u64(out, offset);
  put_u64(out, length);
  out += encode_response_meta(head);
  return out;
}

bool decode_file_meta(std::string_view meta, HttpResponseData& head, std::uint64_t& offset, std::uint64_t& length) {
  if (meta.size() < 16) return false;
  std::memcpy(&offset, meta.data(), 8);
  std::memcpy(&length, meta.data() + 8, 8);
  return decode_response_meta(meta.substr(16), head);
}

std::string tag(std::uint64_t id, std::string_view rest) {
  std::string out;
  out.reserve(8 + rest.size());
  put_u64(out, id);
  out.append(rest);
  return out;
}

bool untag(std::string_view& meta, std::uint64_t& id) {
  if (meta.size() < 8) return false;
  std::memcpy(&id, meta.data(), 8);
  meta.remove_prefix(8);
  return true;
}

std::string encode_asgi_request(std::uint64_t id, std::chrono::microseconds left, std::size_t route_index,
                                const HttpRequestData& request) {
  std::string out = tag(id);
  put_u64(out, static_cast<std::uint64_t>(left.count()));
  out += encode_request_meta(route_index, request);
  return out;
}

std::string encode_ws_close(int code, std::string_view reason) {
  std::string out = std::to_string(code);
  out += ' ';
  out += reason;
  return out;
}

bool decode_ws_close(std::string_view meta, int& code, std::string& reason) {
  const std::size_t space = meta.find(' ');
  if (space == std::string_view::npos) return false;
  const auto [end, ec] = std::from_chars(meta.data(), meta.data() + space, code);
  if (ec != std::errc() || end != meta.data() + space || code < 1000 || code > 4999) return false;
  reason.assign(meta.substr(space + 1));
  return true;
}

bool decode_asgi_request(std::string_view meta, std::uint64_t& id, std::chrono::microseconds& left,
                         std::size_t& route_index, HttpRequestData& out) {
  std::uint64_t micros = 0;
  if (!untag(meta, id) || !untag(meta, micros)) return false;
  left = std::chrono::microseconds(static_cast<std::int64_t>(micros));
  return decode_request_meta(meta, route_index, out);
}

Outbox::Outbox(int fd) : fd_(fd), thread_([this] { run(); }) {}

Outbox::~Outbox() { close(); }

std::size_t Outbox::Item::size() const {
  return prefix.size() + (kind ? kHeaderSize + meta.size() + body.size() : 0);
}

ssize_t Outbox::Item::send(int fd, int flags) const {
  if (!kind) return send_pieces(fd, {prefix}, written, flags);
  return send_frame(fd, prefix, *kind, meta, body, written, flags, written == 0 ? passed.fd : -1);
}

void Outbox::post(Kind kind, std::string meta, std::string body) {
  post_frame(kind, std::move(meta), std::move(body), Fd());
}

void Outbox::post_with_fd(Kind kind, std::string meta, Fd&& passed) {
  post_frame(kind, std::move(meta), {}, std::move(passed));
}

void Outbox::post_frame(Kind kind, std::string&& meta, std::string&& body, Fd&& passed) {
  app_forks::leave_if_forked();
  {
    std::lock_guard lock(mutex_);
    if (closing_ || failed_) return;
    // What post_later() held back goes ahead of it, in the same write.
    if (!enqueue_locked({std::exchange(later_, {}), kind, std::move(meta), std::move(body), std::move(passed)})) {
      return;
    }
  }
  wake_.notify_one();
}

void Outbox::post_later(Kind kind, std::string_view meta) {
  app_forks::leave_if_forked();
  std::lock_guard lock(mutex_);
  if (closing_ || failed_) return;
  char header[kHeaderSize];
  put_header(header, kind, meta.size(), 0);
  later_.append(header, kHeaderSize);
  later_.append(meta);
}

void Outbox::flush() {
  {
    std::lock_guard lock(mutex_);
    if (later_.empty() || closing_ || failed_) return;
    if (!enqueue_locked({std::exchange(later_, {}), std::nullopt, {}, {}})) return;
  }
  wake_.notify_one();
}

// With mutex_. Nothing ahead of it: written now, as far as the socket takes it without
// waiting (a hand-off to the thread costs its wake-up, on every request); the thread
// writes the rest. True when the thread has something to write.
bool Outbox::enqueue_locked(Item item) {
  if (queue_.empty() && !writing_) {
    const ssize_t sent = item.send(fd_, MSG_DONTWAIT);
    if (sent < 0) {
      failed_ = true;
      return false;
    }
    item.written = static_cast<std::size_t>(sent);
    if (item.written == item.size()) return false;
  }
  queue_.push_back(std::move(item));
  return true;
}

void Outbox::close() {
  {
    std::lock_guard lock(mutex_);
    if (!later_.empty() && !closing_ && !failed_) queue_.push_back({std::exchange(later_, {}), std::nullopt, {}, {}});
    closing_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

bool Outbox::failed() const {
  std::lock_guard lock(mutex_);
  return failed_;
}

void Outbox::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return closing_ || !queue_.empty(); });
    if (queue_.empty()) return;  // closing, and everything is written
    Item item = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.unlock();
    const bool written = item.send(fd_, 0) >= 0;
    lock.lock();
    writing_ = false;
    if (!written) {
      failed_ = true;
      queue_.clear();
      return;
    }
  }
}

void ControlMessage::close_fds() {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

namespace {

constexpr const char* kFdsType = "fds";  // a message that only carries descriptors ahead

bool send_one_control(int fd, const std::string& text, std::span<const int> pass_fds) {
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!pass_fds.empty()) attach_rights(msg, control, pass_fds);
  for (;;) {
    ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n >= 0) return static_cast<std::size_t>(n) == text.size();
    if (errno != EINTR) return false;
  }
}

}  // namespace

bool send_control(int fd, const nlohmann::json& body, std::span<const int> pass_fds) {
  const std::string text = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > kMaxControlMessage) {
    errno = EMSGSIZE;
    return false;
  }
  // What does not fit in the message itself goes ahead, in messages of its own.
  static const std::string fds_text = nlohmann::json{{"type", kFdsType}}.dump();
  while (pass_fds.size() > kMaxFdsPerMessage) {
    if (!send_one_control(fd, fds_text, pass_fds.first(kMaxFdsPerMessage))) return false;
    pass_fds = pass_fds.subspan(kMaxFdsPerMessage);
  }
  return send_one_control(fd, text, pass_fds);
}

bool receive_control(int fd, ControlMessage& out, std::string* error) {
  out.fds.clear();
  std::string buf(kMaxControlMessage, '\0');
  for (;;) {
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
      n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    auto fail = [&](const std::string& why) {
      out.close_fds();
      if (error) *error = why;
      return false;
    };
    if (n < 0) return fail(std::strerror(errno));
    take_rights(msg, [&](int received) { out.fds.push_back(received); });
    if (n == 0) return fail("end of stream");
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return fail("control message truncated");
    out.body = nlohmann::json::parse(buf.data(), buf.data() + n, nullptr, false);
    if (!out.body.is_object()) return fail("control message is not a JSON object");
    if (out.body.size() == 1 && out.body.value("type", "") == kFdsType) continue;  // more to come
    return true;
  }
}

std::string encode_worker_control(const WorkerControl& m) {
  std::string out;
  out.reserve(kWorkerControlSize);
  put_u32(out, static_cast<std::uint32_t>(m.kind));
  put_u32(out, m.lane);
  put_u64(out, m.number);
  return out;
}

bool decode_worker_control(std::string_view bytes, WorkerControl& out) {
  if (bytes.size() != kWorkerControlSize) return false;
  MetaReader in(bytes);
  std::uint32_t kind = 0;
  if (!in.u32(kind) || !in.u32(out.lane) || !in.u64(out.number) || !in.done()) return false;
  if (kind != static_cast<std::uint32_t>(WorkerControlKind::interrupt) || out.number == 0) return false;
  out.kind = static_cast<WorkerControlKind>(kind);
  return true;
}

bool send_worker_control(int fd, const WorkerControl& message) {
  const std::string bytes = encode_worker_control(message);
  for (;;) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return static_cast<std::size_t>(n) == bytes.size();
    if (errno != EINTR) return false;
  }
}

bool receive_worker_control(int fd, WorkerControl& out) {
  for (;;) {
    char buf[kWorkerControlSize + 1];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (decode_worker_control(std::string_view(buf, static_cast<std::size_t>(n)), out)) return true;
  }
}

}  // namespace gilgamesh::frames

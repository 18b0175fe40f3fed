// A response body that is a regular file's bytes, read by the connection's thread as the
// client takes them: the static files the server answers itself (server/http/static_files),
// and a WSGI app's wsgi.file_wrapper over a real file (pyworkers/apps/wsgi_app), whose worker
// is free again once it handed the file over.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "server/model/body_stream.hpp"

namespace gilgamesh {

// A file descriptor that closes itself.
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd = std::exchange(o.fd, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  void reset();
};

// Reads `length` bytes at `offset` into `out` (resized to it); false if the file ended first
// or a read failed.
bool read_at(int fd, std::uint64_t offset, std::size_t length, std::string& out);

struct FileBody {
  static constexpr std::size_t kChunk = 32 * 1024;     // one read
  static constexpr std::size_t kBuffered = 64 * 1024;  // read ahead of the client, per response
  static constexpr std::size_t kWhole = 256 * 1024;    // up to this, a body is read at once, not streamed
};

// The Content-Type for a file name, by its extension (a table of 37 web types, case
// ignored); "application/octet-stream" when unknown.
std::string_view content_type_by_name(std::string_view name);

// The consumer's end of a stream that carries `length` bytes of `fd` from `offset`: kChunk
// reads, offered until kBuffered wait, then again each time the connection took them (on
// its thread). The first reads happen here, on the calling thread. A read that fails or
// finds the file shorter calls `on_failure(offset of the read)` and ends the stream as
// failed (the connection closes, the body cut short). The descriptor is closed when the
// body is over or the client has gone.
std::shared_ptr<BodyStream> stream_file(Fd&& fd, std::uint64_t offset, std::uint64_t length,
                                        std::function<void(std::uint64_t)> on_failure);

}  // namespace gilgamesh

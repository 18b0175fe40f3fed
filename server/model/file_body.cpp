#include "server/model/file_body.hpp"

#include <unistd.h>

#include <boost/beast/core/string.hpp>

#include <algorithm>
#include <cerrno>
#include <string_view>

namespace gilgamesh {

void Fd::reset() {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

bool read_at(int fd, std::uint64_t offset, std::size_t length, std::string& out) {
  out.resize(length);
  std::size_t got = 0;
  while (got < length) {
    const ssize_t n = ::pread(fd, out.data() + got, length - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    got += static_cast<std::size_t>(n);
  }
  return true;
}

namespace {

struct TypeByExtension {
  std::string_view extension;
  std::string_view type;
};

// The types a web front end and a Django or Flask app's static folder hold.
constexpr TypeByExtension kTypes[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"txt", "text/plain; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"},
    {"xml", "application/xml"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/vnd.microsoft.icon"},
    {"bmp", "image/bmp"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"eot", "application/vnd.ms-fontobject"},
    {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},
    {"zip", "application/zip"},
    {"gz", "application/gzip"},
    {"tar", "application/x-tar"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
    {"mp3", "audio/mpeg"},
    {"ogg", "audio/ogg"},
    {"wav", "audio/wav"},
    {"m4a", "audio/mp4"},
};

class FileFeed : public std::enable_shared_from_this<FileFeed> {
 public:
  FileFeed(Fd&& fd, std::uint64_t offset, std::uint64_t length, std::shared_ptr<BodyStream> stream,
           std::function<void(std::uint64_t)> on_failure)
      : fd_(std::move(fd)), next_(offset), left_(length), stream_(std::move(stream)),
        on_failure_(std::move(on_failure)) {}

  // Offers chunks until the stream is full (it calls feed() again, on the connection's
  // thread, once the connection took them), cancelled, or the body is over. Nothing of this
  // object is touched after an offer that was not taken: the next feed() may run already.
  void feed() {
    while (left_ > 0) {
      std::string chunk;
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left_, FileBody::kChunk));
      if (!read_at(fd_.fd, next_, n, chunk)) {
        if (on_failure_) on_failure_(next_);
        fd_.reset();
        return stream_->finish(false);
      }
      next_ += n;
      left_ -= n;
      const BodyStream::Offer offer =
          stream_->offer(std::move(chunk), [self = shared_from_this()] { self->feed(); });
      if (offer != BodyStream::Offer::taken) {
        if (offer == BodyStream::Offer::cancelled) fd_.reset();
        return;
      }
    }
    fd_.reset();
    stream_->finish(true);
  }

 private:
  Fd fd_;
  std::uint64_t next_;
  std::uint64_t left_;
  std::shared_ptr<BodyStream> stream_;
  std::function<void(std::uint64_t)> on_failure_;
};

}  // namespace

std::string_view content_type_by_name(std::string_view name) {
  const auto dot = name.rfind('.');
  const auto slash = name.rfind('/');
  if (dot != std::string_view::npos && (slash == std::string_view::npos || dot > slash)) {
    const std::string_view extension = name.substr(dot + 1);
    for (const TypeByExtension& t : kTypes) {
      if (boost::beast::iequals(t.extension, extension)) return t.type;
    }
  }
  return "application/octet-stream";
}

std::shared_ptr<BodyStream> stream_file(Fd&& fd, std::uint64_t offset, std::uint64_t length,
                                        std::function<void(std::uint64_t)> on_failure) {
  BodyStream::Ends ends = BodyStream::make(FileBody::kBuffered);
  auto feed = std::make_shared<FileFeed>(std::move(fd), offset, length, std::move(ends.producer),
                                         std::move(on_failure));
  feed->feed();
  return std::move(ends.consumer);
}

}  // namespace gilgamesh

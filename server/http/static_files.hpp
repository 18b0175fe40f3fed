// Files served from directories by the server itself, on the I/O thread, without Python:
// Granian's --static-path-route / --static-path-mount, uWSGI's --static-map. A Django app's
// collectstatic folder or a front end's build served beside the app, in one container,
// without nginx or whitenoise.
//
// What a request under a mount gets (RFC 9110):
//   - GET and HEAD; any other method 405 with `Allow: GET, HEAD`.
//   - the file, with Content-Type by its extension, Content-Length, Last-Modified, a strong
//     ETag (nginx's form: mtime and size in hex), `Cache-Control: max-age=N`
//     (--static-path-expires; 0: `no-cache`), `Accept-Ranges: bytes`.
//   - a compressed copy beside the file (`site.css.br`, `site.css.gz`) for a client whose
//     Accept-Encoding takes it, br first, with Content-Encoding and `Vary: Accept-Encoding`.
//   - 304 for If-None-Match (weak comparison, `*`) or, without it, If-Modified-Since.
//   - 206 for one byte range (`bytes=a-b`, `a-`, `-n`), If-Range honoured; 416 with
//     `Content-Range: bytes */size` where the range starts past the end; several ranges, or
//     a Range that does not parse, are ignored (the whole file, 200), as RFC 9110 14.2 allows.
//   - a directory: 404, or with --static-path-dir-to-file its index file (`/static/docs`
//     first redirects, 301, to `/static/docs/` so the page's relative links resolve).
//   - 404 for anything else: no such file, not a regular file, unreadable, a segment that is
//     `..`, `.`, empty (`//`), hidden (starts with '.'), or holds an encoded '/' or NUL, and
//     a symbolic link that leads out of the mount's directory. The app never sees a request
//     under a mount.
// A file is opened with openat2(RESOLVE_BENEATH) below the mount's directory (one system call
// that cannot leave it); where the kernel or a seccomp filter refuses openat2, or the path
// holds a symbolic link it will not follow (an absolute one), the path is resolved with
// realpath(3) and checked to be below the directory. Files up to kWholeFile bytes are read whole; larger ones are read in kChunk pieces as the
// client takes them (at most kBuffered bytes wait per response).
#pragma once

#include <boost/beast/http.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/model/executor.hpp"
#include "server/model/file_body.hpp"

namespace gilgamesh {

struct StaticMount {
  std::string route;      // "/static": starts with '/', no trailing '/', not "/" itself
  std::vector<std::string> segments;  // the route's segments, as match() compares them
  std::string directory;  // absolute, symbolic links resolved
  int fd = -1;            // the directory, opened (O_PATH) at start: files are opened below it
};

// A request whose path is under a mount.
struct StaticRequest {
  std::size_t mount = 0;
  std::string relative;         // the decoded segments below the mount, joined with '/'; "" for its root
  bool trailing_slash = false;  // the path ended in '/' (a directory asked for as one)
  bool refused = false;         // a segment names no file that is served (see the top): 404
  std::string raw_path;         // the path as received, for a redirect's Location
  std::string query;            // raw, after '?', for a redirect
};

class StaticFiles {
 public:
  static constexpr std::size_t kWholeFile = FileBody::kWhole;
  static constexpr std::size_t kChunk = FileBody::kChunk;
  static constexpr std::size_t kBuffered = FileBody::kBuffered;

  // `routes` pair with `directories` in order (`routes` empty: "/static" for a single
  // directory). Throws std::invalid_argument with the message a user should read.
  StaticFiles(std::vector<std::string> routes, const std::vector<std::string>& directories,
              long long expires_seconds, std::string dir_to_file);
  ~StaticFiles();
  StaticFiles(const StaticFiles&) = delete;
  StaticFiles& operator=(const StaticFiles&) = delete;

  // The mount `path` (the target's path, not decoded, without the query) is under, compared
  // segment by segment after decoding; nothing when it is under none.
  std::optional<StaticRequest> match(std::string_view path, std::string_view query) const;

  // The answer to `request` (GET or HEAD gets the file). Opens and reads the file on the
  // calling thread; a body larger than kWholeFile comes as a stream (HttpResponseData::stream)
  // that reads the file as the connection takes it, on the connection's thread.
  HttpResponseData answer(const StaticRequest& target,
                          const boost::beast::http::request<boost::beast::http::string_body>& request,
                          const std::string& request_id) const;

  const std::vector<StaticMount>& mounts() const { return mounts_; }

  // The Content-Type for a file name, by its extension ("application/octet-stream" when unknown).
  static std::string_view content_type_for(std::string_view name);

  // A byte range of a file of `size` bytes, as a Range header asks (RFC 9110 14.1.2).
  struct Range {
    enum class Kind { ignored, satisfiable, unsatisfiable } kind = Kind::ignored;
    std::uint64_t first = 0, last = 0;  // inclusive, when satisfiable
  };
  static Range parse_range(std::string_view header, std::uint64_t size);

  // Whether an Accept-Encoding value takes `coding` (RFC 9110 12.5.3): named, or covered by
  // `*`, with a q-value above 0.
  static bool accepts_coding(std::string_view accept_encoding, std::string_view coding);

 private:
  void add_mounts(const std::vector<std::string>& routes, const std::vector<std::string>& directories);

  std::vector<StaticMount> mounts_;
  long long expires_;
  std::string dir_to_file_;
};

}  // namespace gilgamesh

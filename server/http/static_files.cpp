#include "server/http/static_files.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <stdexcept>
#include <utility>

#include "server/http/exchange.hpp"
#include "server/model/body_stream.hpp"
#include "server/model/file_body.hpp"
#include "server/model/query.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

namespace http = boost::beast::http;

namespace {

std::string_view sv(boost::beast::string_view s) { return {s.data(), s.size()}; }

// `path` split at '/', after its leading one ("/a/b/" -> "a", "b", "").
std::vector<std::string_view> segments(std::string_view path) {
  std::vector<std::string_view> out;
  if (path.starts_with('/')) path.remove_prefix(1);
  while (true) {
    const auto slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

// A segment that may be part of a served file's path, once decoded.
bool servable(std::string_view segment) {
  return !segment.empty() && segment.front() != '.' && segment.find('/') == std::string_view::npos &&
         segment.find('\0') == std::string_view::npos;
}

// An IMF-fixdate (RFC 9110 5.6.7); the obsolete forms are not read (the header is then ignored).
std::optional<std::time_t> parse_imf_date(std::string_view s) {
  const std::string text(trim_ows(s));
  std::tm tm{};
  const char* end = strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  return timegm(&tm);
}

struct Opened {
  Fd fd;
  struct stat st {};
};

constexpr int kOpenFlags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;  // a FIFO does not block the open

std::optional<Opened> opened(int fd) {
  Opened out;
  out.fd = Fd(fd);
  if (out.fd.fd < 0 || ::fstat(out.fd.fd, &out.st) != 0) return std::nullopt;
  return out;
}

// Whether openat2(2) may be called: false once it answered ENOSYS (a kernel before 5.6) or
// EPERM (a container's seccomp filter that does not know it).
std::atomic<bool> openat2_usable{true};

// `relative` (below `mount`; "" for the directory itself) opened for reading, if it resolves,
// symbolic links followed, to the mount's directory or below it.
std::optional<Opened> open_below(const StaticMount& mount, const std::string& relative) {
  if (openat2_usable.load(std::memory_order_relaxed)) {
    open_how how{};
    how.flags = kOpenFlags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    const long fd = ::syscall(SYS_openat2, mount.fd, relative.empty() ? "." : relative.c_str(), &how, sizeof how);
    if (fd >= 0) return opened(static_cast<int>(fd));
    if (errno == ENOSYS || errno == EPERM) {
      openat2_usable.store(false, std::memory_order_relaxed);
    } else if (errno != EXDEV) {
      return std::nullopt;  // not there, not readable, a loop
    }
    // EXDEV: a link openat2 does not follow beneath (an absolute one); where it leads is checked below.
  }
  const std::string path = relative.empty() ? mount.directory : mount.directory + "/" + relative;
  std::unique_ptr<char, decltype(&std::free)> resolved(::realpath(path.c_str(), nullptr), &std::free);
  if (!resolved) return std::nullopt;
  const std::string_view real(resolved.get());
  const std::string& root = mount.directory;
  if (real != root && !(real.starts_with(root) && real.size() > root.size() && real[root.size()] == '/')) {
    return std::nullopt;  // a link that leads out of the mount
  }
  return opened(::open(resolved.get(), kOpenFlags));
}


}  // namespace

StaticFiles::StaticFiles(std::vector<std::string> routes, const std::vector<std::string>& directories,
                         long long expires_seconds, std::string dir_to_file)
    : expires_(expires_seconds), dir_to_file_(std::move(dir_to_file)) {
  if (directories.empty()) {
    if (!routes.empty() || !dir_to_file_.empty()) {
      throw std::invalid_argument(std::string(routes.empty() ? "--static-path-dir-to-file" : "--static-path-route") +
                                  " needs a --static-path-mount: the directory it serves");
    }
    return;
  }
  if (routes.empty() && directories.size() == 1) routes.push_back("/static");
  if (routes.size() != directories.size()) {
    throw std::invalid_argument("each --static-path-mount pairs with one --static-path-route, in order: got " +
                                std::to_string(directories.size()) + " mounts and " +
                                std::to_string(routes.size()) + " routes");
  }
  if (!dir_to_file_.empty() && !servable(dir_to_file_)) {
    throw std::invalid_argument("--static-path-dir-to-file names a file in the directory, as index.html; got '" +
                                dir_to_file_ + "'");
  }
  try {
    add_mounts(routes, directories);
  } catch (...) {
    for (const StaticMount& m : mounts_) ::close(m.fd);
    throw;
  }
  // The longest route first: /static/admin before /static.
  std::stable_sort(mounts_.begin(), mounts_.end(),
                   [](const StaticMount& a, const StaticMount& b) { return a.route.size() > b.route.size(); });
}

void StaticFiles::add_mounts(const std::vector<std::string>& routes, const std::vector<std::string>& directories) {
  for (std::size_t i = 0; i < routes.size(); ++i) {
    std::string route = routes[i];
    while (route.size() > 1 && route.back() == '/') route.pop_back();
    const bool plain = route.find_first_of("%?#\\") == std::string::npos;
    const auto parts = segments(route);
    if (!route.starts_with('/') || route == "/" || !plain ||
        !std::all_of(parts.begin(), parts.end(), [](std::string_view s) { return servable(s); })) {
      throw std::invalid_argument("--static-path-route '" + routes[i] +
                                  "' must be a path below '/' without '.', '..' or empty segments, as /static "
                                  "(the app answers every other path)");
    }
    for (const StaticMount& m : mounts_) {
      if (m.route == route) throw std::invalid_argument("--static-path-route " + route + " is given twice");
    }
    std::unique_ptr<char, decltype(&std::free)> real(::realpath(directories[i].c_str(), nullptr), &std::free);
    const int fd = real ? ::open(real.get(), O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd < 0) throw std::invalid_argument("--static-path-mount " + directories[i] + " is not a directory");
    std::vector<std::string> route_segments(parts.begin(), parts.end());
    mounts_.push_back({std::move(route), std::move(route_segments), real.get(), fd});
  }
}

StaticFiles::~StaticFiles() {
  for (const StaticMount& m : mounts_) ::close(m.fd);
}

std::optional<StaticRequest> StaticFiles::match(std::string_view path, std::string_view query) const {
  if (mounts_.empty()) return std::nullopt;
  const std::vector<std::string_view> raw = segments(path);
  std::vector<std::string> decoded;
  decoded.reserve(raw.size());
  for (std::string_view s : raw) decoded.push_back(percent_decode(s, false));
  for (std::size_t m = 0; m < mounts_.size(); ++m) {
    const std::vector<std::string>& route = mounts_[m].segments;
    if (decoded.size() < route.size() || !std::equal(route.begin(), route.end(), decoded.begin())) continue;
    StaticRequest out;
    out.mount = m;
    out.raw_path = std::string(path);
    out.query = std::string(query);
    std::size_t end = decoded.size();
    if (end > route.size() && decoded.back().empty()) {
      out.trailing_slash = true;
      --end;
    }
    for (std::size_t i = route.size(); i < end; ++i) {
      if (!servable(decoded[i])) out.refused = true;
      if (!out.relative.empty()) out.relative += '/';
      out.relative += decoded[i];
    }
    return out;
  }
  return std::nullopt;
}

std::string_view StaticFiles::content_type_for(std::string_view name) { return content_type_by_name(name); }

bool StaticFiles::accepts_coding(std::string_view list, std::string_view coding) {
  std::optional<bool> star;
  while (!list.empty()) {
    const auto comma = list.find(',');
    const std::string_view item = trim_ows(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    const auto semicolon = item.find(';');
    const std::string_view name = trim_ows(item.substr(0, semicolon));
    bool acceptable = true;
    if (semicolon != std::string_view::npos) {
      std::string_view q = trim_ows(item.substr(semicolon + 1));
      if (q.size() >= 2 && (q[0] == 'q' || q[0] == 'Q') && q[1] == '=') {
        q = trim_ows(q.substr(2));
        acceptable = !(q.starts_with('0') && q.find_first_not_of("0.") == std::string_view::npos);
      }
    }
    if (boost::beast::iequals(name, coding)) return acceptable;
    if (name == "*") star = acceptable;
  }
  return star.value_or(false);
}

StaticFiles::Range StaticFiles::parse_range(std::string_view header, std::uint64_t size) {
  Range out;
  header = trim_ows(header);
  const auto eq = header.find('=');
  if (eq == std::string_view::npos || !boost::beast::iequals(trim_ows(header.substr(0, eq)), "bytes")) return out;
  const std::string_view spec = trim_ows(header.substr(eq + 1));
  if (spec.find(',') != std::string_view::npos) return out;  // several ranges: the whole file
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos) return out;
  auto number = [](std::string_view s, std::uint64_t& value) {
    if (s.empty() || s.size() > 19) return false;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    return ec == std::errc() && end == s.data() + s.size();
  };
  const std::string_view first_text = spec.substr(0, dash), last_text = spec.substr(dash + 1);
  std::uint64_t first = 0, last = 0;
  if (first_text.empty()) {  // the last N bytes
    if (!number(last_text, last)) return out;
    if (last == 0 || size == 0) {
      out.kind = Range::Kind::unsatisfiable;
      return out;
    }
    out.kind = Range::Kind::satisfiable;
    out.first = size - std::min(last, size);
    out.last = size - 1;
    return out;
  }
  if (!number(first_text, first)) return out;
  if (last_text.empty()) {
    last = UINT64_MAX;
  } else if (!number(last_text, last) || last < first) {
    return out;
  }
  if (first >= size) {
    out.kind = Range::Kind::unsatisfiable;
    return out;
  }
  out.kind = Range::Kind::satisfiable;
  out.first = first;
  out.last = std::min(last, size - 1);
  return out;
}

HttpResponseData StaticFiles::answer(const StaticRequest& target, const http::request<http::string_body>& request,
                                     const std::string& request_id) const {
  const StaticMount& mount = mounts_.at(target.mount);
  const bool head = request.method() == http::verb::head;
  if (!head && request.method() != http::verb::get) {
    HttpResponseData r = make_error_response(
        405, std::string(sv(request.method_string())) + " is not allowed on the static files under " + mount.route +
                 "; allowed: GET, HEAD",
        request_id);
    r.headers.push_back({"Allow", "GET, HEAD"});
    return r;
  }
  auto not_found = [&] { return make_error_response(404, "no file at " + target.raw_path, request_id); };
  if (target.refused) return not_found();
  std::optional<Opened> file = open_below(mount, target.relative);
  if (!file) return not_found();
  std::string name = target.relative;
  if (S_ISDIR(file->st.st_mode)) {
    if (dir_to_file_.empty()) return not_found();
    if (!target.trailing_slash) {
      HttpResponseData r = make_error_response(301, "moved to " + target.raw_path + "/", request_id);
      r.headers.push_back({"Location", target.raw_path + "/" + (target.query.empty() ? "" : "?" + target.query)});
      return r;
    }
    name = target.relative.empty() ? dir_to_file_ : target.relative + "/" + dir_to_file_;
    file = open_below(mount, name);
    if (!file) return not_found();
  } else if (target.trailing_slash) {
    return not_found();  // a file asked for as a directory
  }
  if (!S_ISREG(file->st.st_mode)) return not_found();

  // A compressed copy beside the file (site.css.br, site.css.gz: whitenoise's, `gzip -k`'s), for
  // a client that takes its coding, as nginx's gzip_static: its own length and ETag.
  std::string accepted;  // every Accept-Encoding field, as one list
  for (auto [it, end] = request.equal_range(http::field::accept_encoding); it != end; ++it) {
    accepted.append(accepted.empty() ? "" : ",").append(sv(it->value()));
  }
  std::string_view coding;
  for (const auto& [suffix, token] : {std::pair<const char*, std::string_view>{".br", "br"}, {".gz", "gzip"}}) {
    if (!accepts_coding(accepted, token)) continue;
    if (auto copy = open_below(mount, name + suffix); copy && S_ISREG(copy->st.st_mode)) {
      file = std::move(copy);
      coding = token;
      break;
    }
  }

  const std::uint64_t size = static_cast<std::uint64_t>(file->st.st_size);
  const std::time_t mtime = file->st.st_mtime;
  char etag_text[64];
  std::snprintf(etag_text, sizeof etag_text, "\"%llx-%llx\"", static_cast<unsigned long long>(mtime),
                static_cast<unsigned long long>(size));
  const std::string etag = etag_text;
  const std::string last_modified = imf_date(mtime);

  HttpResponseData r;
  r.headers.push_back({"Last-Modified", last_modified});
  r.headers.push_back({"ETag", etag});
  r.headers.push_back({"Cache-Control", expires_ > 0 ? "max-age=" + std::to_string(expires_) : "no-cache"});
  if (!coding.empty()) r.headers.push_back({"Vary", "Accept-Encoding"});

  // RFC 9110 13.2.2: If-None-Match, else If-Modified-Since.
  bool not_modified = false;
  if (const auto inm = request.find(http::field::if_none_match); inm != request.end()) {
    const auto weak = [](std::string_view tag) {
      tag = trim_ows(tag);
      if (tag.starts_with("W/")) tag.remove_prefix(2);
      return tag;
    };
    std::string_view list = sv(inm->value());
    while (!not_modified && !list.empty()) {
      const auto comma = list.find(',');
      const std::string_view tag = trim_ows(list.substr(0, comma));
      not_modified = tag == "*" || weak(tag) == etag;
      list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    }
  } else if (const auto ims = request.find(http::field::if_modified_since); ims != request.end()) {
    const std::optional<std::time_t> since = parse_imf_date(sv(ims->value()));
    not_modified = since && mtime <= *since;
  }
  if (not_modified) {
    r.status = 304;
    return r;
  }

  r.content_type = std::string(content_type_for(name));
  if (!coding.empty()) r.headers.push_back({"Content-Encoding", std::string(coding)});
  r.headers.push_back({"Accept-Ranges", "bytes"});
  r.headers.push_back({"X-Content-Type-Options", "nosniff"});
  std::uint64_t first = 0, length = size;
  if (const auto range = request.find(http::field::range); range != request.end() && !head) {
    bool current = true;  // If-Range: the client's copy is this one
    if (const auto if_range = request.find(http::field::if_range); if_range != request.end()) {
      const std::string_view value = trim_ows(sv(if_range->value()));
      current = value.starts_with('"') ? value == etag : value == last_modified;
    }
    const Range asked = current ? parse_range(sv(range->value()), size) : Range{};
    if (asked.kind == Range::Kind::unsatisfiable) {
      HttpResponseData refused = make_error_response(
          416, "the range " + std::string(sv(range->value())) + " starts past the file's " + std::to_string(size) +
                   " bytes",
          request_id);
      refused.headers.push_back({"Content-Range", "bytes */" + std::to_string(size)});
      return refused;
    }
    if (asked.kind == Range::Kind::satisfiable) {
      r.status = 206;
      first = asked.first;
      length = asked.last - asked.first + 1;
      r.headers.push_back({"Content-Range", "bytes " + std::to_string(asked.first) + "-" +
                                                std::to_string(asked.last) + "/" + std::to_string(size)});
    }
  }
  if (head) {
    r.headers.push_back({"Content-Length", std::to_string(length)});
    return r;
  }
  if (length <= kWholeFile) {
    if (!read_at(file->fd.fd, first, static_cast<std::size_t>(length), r.body)) {
      spdlog::error("request {}: the static file {}/{} could not be read whole (it changed while it was "
                    "read); answered 500", request_id, mount.directory, name);
      return make_error_response(500, "internal server error", request_id);
    }
    return r;
  }
  r.headers.push_back({"Content-Length", std::to_string(length)});
  r.stream = stream_file(std::move(file->fd), first, length, [request_id](std::uint64_t at) {
    spdlog::error("request {}: the static file ended or could not be read at byte {} (it changed while it was "
                  "sent); the connection is closed",
                  request_id, at);
  });
  return r;
}

}  // namespace gilgamesh

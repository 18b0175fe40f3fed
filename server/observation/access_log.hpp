// --access-log-format: the access log's line in gunicorn's atoms (its --access-logformat), so
// that what reads gunicorn's log (the Apache combined format, a log shipper's parser) reads
// ours. Parsed once at start-up; a line is rendered only when the access log is on.
//
//   %(h)s client address     %(l)s '-'            %(u)s Basic auth user, else '-'
//   %(t)s [06/Dec/2026:01:32:12 +0000], when the request arrived (UTC)
//   %(r)s request line       %(m)s method         %(U)s path   %(q)s query   %(H)s protocol
//   %(s)s status             %(B)s body bytes     %(b)s body bytes, '-' for a stream
//   %(f)s Referer            %(a)s User-Agent     %(p)s pid
//   %(T)s whole seconds      %(M)s milliseconds   %(D)s microseconds   %(L)s decimal seconds
//   %({name}i)s request header   %({name}o)s response header   %({name}e)s environment variable
//   %%: a '%'; anything else is copied. A header that is not there renders as '-'.
//
// Without --access-log-format the line is ours (standard()), and GET /events, written when its
// stream ends, has its own (standard_event_stream()): formats too, of atoms a user cannot name.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace gilgamesh {

// What one line can say about one request. Header lookups return nullopt when absent.
struct AccessEntry {
  using Lookup = std::function<std::optional<std::string_view>(std::string_view name)>;
  std::string_view client;           // the address (the forwarded one from a trusted proxy)
  std::string_view client_and_port;  // ADDRESS:PORT, for our own line
  std::string_view request_id;
  std::string_view method;
  std::string_view target;  // as sent: path and query
  unsigned version = 11;    // 10 or 11
  int status = 0;
  std::optional<std::uint64_t> body_bytes;  // nullopt: streamed, not counted
  std::chrono::system_clock::time_point arrived;
  std::chrono::nanoseconds took{0};
  std::size_t events = 0;  // an event stream's, for our own line
  Lookup request_header;
  Lookup response_header;  // may be empty: no response headers to show
};

class AccessLogFormat {
 public:
  // Throws std::invalid_argument naming what it does not know.
  explicit AccessLogFormat(std::string_view format);
  // "CLIENT:PORT METHOD TARGET STATUS BYTES|streamed 0.123ms REQUEST-ID"
  static AccessLogFormat standard();
  // "CLIENT:PORT GET /events 200 stream: N events in 1.5 s REQUEST-ID"
  static AccessLogFormat standard_event_stream();
  std::string render(const AccessEntry& entry) const;

 private:
  enum class Atom : char;
  struct Part {
    std::string text;  // literal text, or the name of a header or variable
    Atom atom;
  };
  AccessLogFormat() = default;
  void add_text(std::string_view text);
  void add(Atom atom) { parts_.push_back({"", atom}); }
  std::vector<Part> parts_;
};

}  // namespace gilgamesh

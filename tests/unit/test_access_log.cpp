#include <gtest/gtest.h>

#include <map>
#include <stdexcept>

#include "server/observation/access_log.hpp"

using gilgamesh::AccessEntry;
using gilgamesh::AccessLogFormat;

namespace {
AccessEntry entry(const std::map<std::string, std::string>& request_headers) {
  AccessEntry e;
  e.client = "203.0.113.7";
  e.method = "GET";
  e.target = "/a/b?x=1&y=2";
  e.status = 200;
  e.body_bytes = 5;
  e.took = std::chrono::microseconds(1234567);
  e.arrived = std::chrono::system_clock::time_point(std::chrono::seconds(1780000000));  // 2026-05-28 20:26:40 UTC
  e.request_header = [request_headers](std::string_view name) -> std::optional<std::string_view> {
    const auto found = request_headers.find(std::string(name));
    if (found == request_headers.end()) return std::nullopt;
    return std::string_view(found->second);
  };
  return e;
}
}  // namespace

TEST(AccessLogFormat, RendersGunicornsAtoms) {
  const AccessLogFormat combined(R"(%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s")");
  EXPECT_EQ(combined.render(entry({{"authorization", "Basic YWxpY2U6czNjcmV0"}, {"user-agent", "ua/1"}})),
            R"(203.0.113.7 - alice [28/May/2026:20:26:40 +0000] "GET /a/b?x=1&y=2 HTTP/1.1" 200 5 "-" "ua/1")");
  const AccessLogFormat parts("%(m)s|%(U)s|%(q)s|%(H)s|%(T)s|%(M)s|%(D)s|%(L)s|%({X-Absent}i)s|%({user-agent}i)s|100%%");
  EXPECT_EQ(parts.render(entry({{"user-agent", "ua/1"}})), "GET|/a/b|x=1&y=2|HTTP/1.1|1|1234|1234567|1.234567|-|ua/1|100%");
}

TEST(AccessLogFormat, AStreamsSizeAndAbsentThingsAreDashes) {
  AccessEntry e = entry({{"authorization", "Bearer token"}});
  e.body_bytes.reset();
  e.client = "";
  e.version = 10;
  const AccessLogFormat f("%(h)s %(u)s %(b)s %(B)s %({x-request-id}o)s %(H)s");
  EXPECT_EQ(f.render(e), "- - - 0 - HTTP/1.0");
  e.response_header = [](std::string_view name) -> std::optional<std::string_view> {
    if (name == "x-request-id") return std::string_view("abc");
    return std::nullopt;
  };
  e.request_header = [](std::string_view) -> std::optional<std::string_view> { return "Basic !!!notbase64"; };
  EXPECT_EQ(f.render(e), "- - - 0 abc HTTP/1.0");
  // Unpadded base64, 6 and 7 characters: decoded whole, written within its buffer (ASan).
  const AccessLogFormat user("%(u)s");
  e.request_header = [](std::string_view) -> std::optional<std::string_view> { return "basic Ym9iOng"; };  // bob:x
  EXPECT_EQ(user.render(e), "bob");
  e.request_header = [](std::string_view) -> std::optional<std::string_view> { return "Basic YWI6eA"; };  // ab:x
  EXPECT_EQ(user.render(e), "ab");
}

TEST(AccessLogFormat, RefusesWhatItDoesNotKnow) {
  for (const char* bad : {"%(zz)s", "%(h)", "50% done", "%({}i)s", "%({a}x)s", "%"}) {
    EXPECT_THROW(AccessLogFormat{bad}, std::invalid_argument) << bad;
  }
  EXPECT_NO_THROW(AccessLogFormat{"plain text, no atoms"});
}

TEST(AccessLogFormat, OurOwnLinesAreFormatsToo) {
  AccessEntry e = entry({});
  e.client_and_port = "203.0.113.7:51234";
  e.request_id = "abc123";
  EXPECT_EQ(AccessLogFormat::standard().render(e), "203.0.113.7:51234 GET /a/b?x=1&y=2 200 5 1234.567ms abc123");
  e.body_bytes.reset();
  EXPECT_EQ(AccessLogFormat::standard().render(e), "203.0.113.7:51234 GET /a/b?x=1&y=2 200 streamed 1234.567ms abc123");
  e.events = 7;
  EXPECT_EQ(AccessLogFormat::standard_event_stream().render(e),
            "203.0.113.7:51234 GET /events 200 stream: 7 events in 1.2 s abc123");
  // Our own atoms cannot be named in a format.
  EXPECT_THROW(AccessLogFormat("%(1)s"), std::invalid_argument);
}

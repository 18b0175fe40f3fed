// Static mounts (server/http/static_files.hpp): which paths fall under a mount, what a Range
// header asks for, the Content-Type of a name, and the settings a mount refuses. What a
// request under a mount is answered on the wire: tests/blackbox/test_static_files.py.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "server/http/static_files.hpp"

namespace gilgamesh {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "gilgamesh-static-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
    fs::create_directories(path / "a" / "b");
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(StaticFiles, MatchesPathsUnderItsRouteSegmentBySegment) {
  TempDir dir;
  StaticFiles statics({}, {dir.path.string()}, 86400, "");
  ASSERT_EQ(statics.mounts().size(), 1u);
  EXPECT_EQ(statics.mounts()[0].route, "/static");

  auto m = statics.match("/static/css/site.css", "v=3");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->relative, "css/site.css");
  EXPECT_FALSE(m->refused);
  EXPECT_FALSE(m->trailing_slash);
  EXPECT_EQ(m->query, "v=3");

  m = statics.match("/%73tatic/a%20b.txt", "");  // decoded before it is compared
  ASSERT_TRUE(m);
  EXPECT_EQ(m->relative, "a b.txt");

  m = statics.match("/static", "");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->relative, "");
  EXPECT_FALSE(m->trailing_slash);
  m = statics.match("/static/docs/", "");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->relative, "docs");
  EXPECT_TRUE(m->trailing_slash);

  EXPECT_FALSE(statics.match("/staticx/a.css", ""));
  EXPECT_FALSE(statics.match("/", ""));
  EXPECT_FALSE(statics.match("/api/static/a.css", ""));
}

TEST(StaticFiles, RefusesSegmentsThatLeaveOrHide) {
  TempDir dir;
  StaticFiles statics({"/assets"}, {dir.path.string()}, 0, "");
  for (const char* path : {"/assets/../etc/passwd", "/assets/%2e%2e/x", "/assets/./a", "/assets/a//b",
                           "/assets/.env", "/assets/.git/config", "/assets/a%2fb", "/assets/a%00.txt",
                           "/assets/%2E%2E%2Fx"}) {
    const auto m = statics.match(path, "");
    ASSERT_TRUE(m) << path;  // still the mount's: the app never sees it
    EXPECT_TRUE(m->refused) << path;
  }
  EXPECT_FALSE(statics.match("/assets/a..b/c.txt", "")->refused);  // dots inside a name are fine
}

TEST(StaticFiles, TheLongestRouteWins) {
  TempDir dir;
  StaticFiles statics({"/static", "/static/admin"}, {dir.path.string(), (dir.path / "a").string()}, 60, "");
  auto m = statics.match("/static/admin/b/x.js", "");
  ASSERT_TRUE(m);
  EXPECT_EQ(statics.mounts()[m->mount].route, "/static/admin");
  EXPECT_EQ(m->relative, "b/x.js");
  m = statics.match("/static/adminx.js", "");
  ASSERT_TRUE(m);
  EXPECT_EQ(statics.mounts()[m->mount].route, "/static");
}

TEST(StaticFiles, RefusesSettingsItCannotServe) {
  TempDir dir;
  const std::string d = dir.path.string();
  EXPECT_THROW(StaticFiles({"/a", "/b"}, {d}, 60, ""), std::invalid_argument);   // unpaired
  EXPECT_THROW(StaticFiles({}, {d, d}, 60, ""), std::invalid_argument);           // two mounts, no routes
  EXPECT_THROW(StaticFiles({"/"}, {d}, 60, ""), std::invalid_argument);           // the whole site
  EXPECT_THROW(StaticFiles({"static"}, {d}, 60, ""), std::invalid_argument);      // not a path
  EXPECT_THROW(StaticFiles({"/a/../b"}, {d}, 60, ""), std::invalid_argument);
  EXPECT_THROW(StaticFiles({"/a%20b"}, {d}, 60, ""), std::invalid_argument);
  EXPECT_THROW(StaticFiles({"/a", "/a/"}, {d, d}, 60, ""), std::invalid_argument);  // the same route twice
  EXPECT_THROW(StaticFiles({"/a"}, {d + "/missing"}, 60, ""), std::invalid_argument);
  EXPECT_THROW(StaticFiles({"/a"}, {}, 60, ""), std::invalid_argument);            // a route, no mount
  EXPECT_THROW(StaticFiles({}, {}, 60, "index.html"), std::invalid_argument);
  EXPECT_THROW(StaticFiles({}, {d}, 60, "../index.html"), std::invalid_argument);
  EXPECT_NO_THROW(StaticFiles({}, {}, 60, ""));  // no mounts: nothing matches
  EXPECT_FALSE(StaticFiles({}, {}, 60, "").match("/static/a", ""));
  EXPECT_EQ(StaticFiles({"/media/"}, {d}, 60, "").mounts()[0].route, "/media");
}

TEST(StaticFiles, ParsesOneByteRange) {
  using Kind = StaticFiles::Range::Kind;
  auto r = StaticFiles::parse_range("bytes=0-99", 1000);
  EXPECT_EQ(r.kind, Kind::satisfiable);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 99u);
  r = StaticFiles::parse_range("bytes=900-", 1000);
  EXPECT_EQ(r.kind, Kind::satisfiable);
  EXPECT_EQ(r.first, 900u);
  EXPECT_EQ(r.last, 999u);
  r = StaticFiles::parse_range("bytes=500-5000", 1000);  // the last byte past the end: up to it
  EXPECT_EQ(r.last, 999u);
  r = StaticFiles::parse_range("bytes=-100", 1000);
  EXPECT_EQ(r.first, 900u);
  EXPECT_EQ(r.last, 999u);
  r = StaticFiles::parse_range("Bytes = -5000", 1000);  // a suffix longer than the file: all of it
  EXPECT_EQ(r.kind, Kind::satisfiable);
  EXPECT_EQ(r.first, 0u);

  EXPECT_EQ(StaticFiles::parse_range("bytes=1000-", 1000).kind, Kind::unsatisfiable);
  EXPECT_EQ(StaticFiles::parse_range("bytes=-0", 1000).kind, Kind::unsatisfiable);
  EXPECT_EQ(StaticFiles::parse_range("bytes=0-", 0).kind, Kind::unsatisfiable);

  // RFC 9110 14.2: a Range the server does not understand, or several, may be ignored.
  for (const char* ignored : {"bytes=5-2", "bytes=0-1,5-6", "items=0-1", "bytes=a-b", "bytes=", "bytes=-",
                              "bytes 0-1", "bytes=99999999999999999999-"}) {
    EXPECT_EQ(StaticFiles::parse_range(ignored, 1000).kind, Kind::ignored) << ignored;
  }
}

TEST(StaticFiles, ReadsWhichCodingsAcceptEncodingTakes) {
  EXPECT_TRUE(StaticFiles::accepts_coding("gzip, deflate, br, zstd", "br"));
  EXPECT_TRUE(StaticFiles::accepts_coding("GZIP", "gzip"));
  EXPECT_TRUE(StaticFiles::accepts_coding("br;q=0.5, gzip;q=1.0", "gzip"));
  EXPECT_TRUE(StaticFiles::accepts_coding("*", "br"));
  EXPECT_FALSE(StaticFiles::accepts_coding("gzip;q=0", "gzip"));
  EXPECT_FALSE(StaticFiles::accepts_coding("gzip; q=0.000", "gzip"));
  EXPECT_FALSE(StaticFiles::accepts_coding("*, br;q=0", "br"));  // named beats the star
  EXPECT_FALSE(StaticFiles::accepts_coding("*;q=0", "gzip"));
  EXPECT_FALSE(StaticFiles::accepts_coding("identity", "gzip"));
  EXPECT_FALSE(StaticFiles::accepts_coding("", "gzip"));
  EXPECT_FALSE(StaticFiles::accepts_coding("xgzip", "gzip"));
}

TEST(StaticFiles, NamesTheContentTypeByExtension) {
  EXPECT_EQ(StaticFiles::content_type_for("/x/site.CSS"), "text/css; charset=utf-8");
  EXPECT_EQ(StaticFiles::content_type_for("app.min.js"), "text/javascript; charset=utf-8");
  EXPECT_EQ(StaticFiles::content_type_for("logo.svg"), "image/svg+xml");
  EXPECT_EQ(StaticFiles::content_type_for("font.woff2"), "font/woff2");
  EXPECT_EQ(StaticFiles::content_type_for("a.d/README"), "application/octet-stream");
  EXPECT_EQ(StaticFiles::content_type_for("archive.unknown"), "application/octet-stream");
}

}  // namespace
}  // namespace gilgamesh

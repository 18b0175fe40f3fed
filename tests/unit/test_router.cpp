#include <gtest/gtest.h>

#include "server/router.hpp"

using gilgamesh::Builtin;
using gilgamesh::RouteInfo;
using gilgamesh::RouteMatch;
using gilgamesh::Router;
using gilgamesh::StartupError;

namespace {
std::vector<RouteInfo> demo_routes() {
  return {{"/hello", {"GET"}, "hi"}, {"/json", {"POST"}, "j"}, {"/item", {"GET", "PUT"}, "i"},
          {"/item", {"DELETE"}, "d"}};
}
}  // namespace

TEST(Router, FindsPythonRoutesByMethodAndPath) {
  Router r(demo_routes());
  auto m = r.match("GET", "/hello");
  EXPECT_EQ(m.result, RouteMatch::Result::found);
  EXPECT_EQ(m.builtin, Builtin::none);
  EXPECT_EQ(m.route_index, 0u);
  EXPECT_EQ(r.match("PUT", "/item").route_index, 2u);
  EXPECT_EQ(r.match("DELETE", "/item").route_index, 3u);
}

TEST(Router, HeadFollowsGet) {
  Router r(demo_routes());
  auto m = r.match("HEAD", "/hello");
  EXPECT_EQ(m.result, RouteMatch::Result::found);
  EXPECT_EQ(m.route_index, 0u);
  EXPECT_EQ(r.match("HEAD", "/json").result, RouteMatch::Result::method_not_allowed);
}

TEST(Router, UnknownPathIs404AndWrongMethodIs405WithAllow) {
  Router r(demo_routes());
  EXPECT_EQ(r.match("GET", "/nope").result, RouteMatch::Result::not_found);
  EXPECT_EQ(r.match("GET", "/hello/").result, RouteMatch::Result::not_found);
  auto m = r.match("POST", "/hello");
  EXPECT_EQ(m.result, RouteMatch::Result::method_not_allowed);
  EXPECT_EQ(m.allow, "GET, HEAD");
  auto item = r.match("POST", "/item");
  EXPECT_EQ(item.allow, "GET, PUT, DELETE, HEAD");
  EXPECT_EQ(r.match("GET", "/json").allow, "POST");
}

TEST(Router, BuiltinsAnswerGetAndHeadOnly) {
  Router r(demo_routes());
  EXPECT_EQ(r.match("GET", "/healthz").builtin, Builtin::healthz);
  EXPECT_EQ(r.match("HEAD", "/stats").builtin, Builtin::stats);
  EXPECT_EQ(r.match("GET", "/metrics").builtin, Builtin::metrics);
  EXPECT_EQ(r.match("GET", "/").builtin, Builtin::index);
  EXPECT_EQ(r.match("POST", "/healthz").result, RouteMatch::Result::method_not_allowed);
}

TEST(Router, AppMayOwnTheRootButNotReservedPaths) {
  Router r({{"/", {"GET"}, "root"}});
  auto m = r.match("GET", "/");
  EXPECT_EQ(m.builtin, Builtin::none);
  EXPECT_EQ(m.route_index, 0u);
  EXPECT_THROW(Router({{"/healthz", {"GET"}, ""}}), StartupError);
}

TEST(Router, DashboardAndEventsAreBuiltinsUnlessTurnedOff) {
  Router on(demo_routes());
  EXPECT_EQ(on.match("GET", "/dashboard").builtin, Builtin::dashboard);
  EXPECT_EQ(on.match("HEAD", "/events").builtin, Builtin::events);
  EXPECT_EQ(on.match("POST", "/events").result, RouteMatch::Result::method_not_allowed);
  EXPECT_THROW(Router({{"/dashboard", {"GET"}, ""}}), StartupError);

  Router off(demo_routes(), false);
  EXPECT_EQ(off.match("GET", "/dashboard").result, RouteMatch::Result::not_found);
  EXPECT_EQ(off.match("GET", "/events").result, RouteMatch::Result::not_found);
  // With the dashboard off, the app may have those paths.
  Router app_owned({{"/dashboard", {"GET"}, "mine"}}, false);
  EXPECT_EQ(app_owned.match("GET", "/dashboard").builtin, Builtin::none);
}

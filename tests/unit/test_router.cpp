#include <gtest/gtest.h>

#include "server/http/router.hpp"

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

namespace {
std::vector<RouteInfo> pattern_routes() {
  return {{"/items/<int:item_id>", {"GET"}, ""},          // 0
          {"/items/<int:id>", {"DELETE"}, ""},            // 1: same shape, other method
          {"/price/<float:amount>", {"GET"}, ""},         // 2
          {"/files/<path:name>", {"GET"}, ""},            // 3
          {"/users/me", {"GET"}, ""},                     // 4
          {"/users/<name>", {"GET", "POST"}, ""},         // 5
          {"/orders/<int:o>/lines/<int:l>", {"GET"}, ""}, // 6
          {"/mixed/<int:n>", {"GET"}, ""},                // 7
          {"/mixed/<float:x>", {"GET"}, ""},              // 8
          {"/mixed/<word>", {"GET"}, ""},                 // 9
          {"/mixed/<path:rest>", {"GET"}, ""}};           // 10
}

std::vector<std::pair<std::string, std::string>> params_of(const RouteMatch& m) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& p : m.params) out.emplace_back(p.name, p.value);
  return out;
}
}  // namespace

TEST(RouterPatterns, CapturesEachConverter) {
  Router r(pattern_routes());
  auto m = r.match("GET", "/items/42");
  ASSERT_EQ(m.result, RouteMatch::Result::found);
  EXPECT_EQ(m.route_index, 0u);
  ASSERT_EQ(m.params.size(), 1u);
  EXPECT_EQ(m.params[0].name, "item_id");
  EXPECT_EQ(m.params[0].value, "42");
  EXPECT_EQ(m.params[0].converter, gilgamesh::PathParam::Converter::integer);

  auto price = r.match("GET", "/price/2.50");
  EXPECT_EQ(price.route_index, 2u);
  EXPECT_EQ(price.params[0].converter, gilgamesh::PathParam::Converter::number);
  EXPECT_EQ(r.match("GET", "/price/3").route_index, 2u);

  auto file = r.match("GET", "/files/a/b/c.txt");
  EXPECT_EQ(file.route_index, 3u);
  EXPECT_EQ(params_of(file), (std::vector<std::pair<std::string, std::string>>{{"name", "a/b/c.txt"}}));
  EXPECT_EQ(file.params[0].converter, gilgamesh::PathParam::Converter::path);

  auto line = r.match("GET", "/orders/7/lines/9");
  EXPECT_EQ(line.route_index, 6u);
  EXPECT_EQ(params_of(line), (std::vector<std::pair<std::string, std::string>>{{"o", "7"}, {"l", "9"}}));
}

TEST(RouterPatterns, ValuesThatDoNotConvertAre404) {
  Router r(pattern_routes());
  for (const char* path : {"/items/abc", "/items/", "/items/1.5", "/items/-1", "/items/3/x", "/items",
                           "/price/1.", "/price/.5", "/price/x", "/files/", "/orders/1/lines/",
                           "/orders/a/lines/2", "/users/", "/users/bob/extra"}) {
    EXPECT_EQ(r.match("GET", path).result, RouteMatch::Result::not_found) << path;
  }
  // An int too long to become a Python int is not an int.
  EXPECT_EQ(r.match("GET", "/items/" + std::string(5000, '7')).result, RouteMatch::Result::not_found);
}

TEST(RouterPatterns, ExactPathsWinThenTheMostSpecificPattern) {
  Router r(pattern_routes());
  EXPECT_EQ(r.match("GET", "/users/me").route_index, 4u);
  EXPECT_TRUE(r.match("GET", "/users/me").params.empty());
  EXPECT_EQ(r.match("GET", "/users/bob").route_index, 5u);
  // POST is not routed on the exact path: the pattern that allows it serves it.
  auto post = r.match("POST", "/users/me");
  EXPECT_EQ(post.result, RouteMatch::Result::found);
  EXPECT_EQ(post.route_index, 5u);
  EXPECT_EQ(r.match("GET", "/mixed/12").route_index, 7u);
  EXPECT_EQ(r.match("GET", "/mixed/1.5").route_index, 8u);
  EXPECT_EQ(r.match("GET", "/mixed/word").route_index, 9u);
  EXPECT_EQ(r.match("GET", "/mixed/a/b").route_index, 10u);
}

TEST(RouterPatterns, MethodsOfOneShapeAnd405WithAllow) {
  Router r(pattern_routes());
  auto del = r.match("DELETE", "/items/3");
  EXPECT_EQ(del.route_index, 1u);
  ASSERT_EQ(del.params.size(), 1u);
  EXPECT_EQ(del.params[0].name, "id");  // the DELETE route's own name
  EXPECT_EQ(r.match("HEAD", "/items/3").route_index, 0u);
  auto put = r.match("PUT", "/items/3");
  EXPECT_EQ(put.result, RouteMatch::Result::method_not_allowed);
  EXPECT_EQ(put.allow, "GET, DELETE, HEAD");
  auto me = r.match("DELETE", "/users/me");  // exact GET, pattern GET/POST
  EXPECT_EQ(me.result, RouteMatch::Result::method_not_allowed);
  EXPECT_EQ(me.allow, "GET, POST, HEAD");
}

TEST(RouterPatterns, UnparseablePatternsAreStartupErrorsNamingThem) {
  for (const char* bad : {"/items/<int:id", "/items/<int:>", "/items/<uuid:id>", "/items/x<id>",
                          "/items/<1st>", "/a/<x>/<x>", "/a/<path:p>/b", "/a/<int:x>>"}) {
    try {
      Router r({{bad, {"GET"}, ""}});
      ADD_FAILURE() << bad << " was accepted";
    } catch (const StartupError& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(RouterPatterns, CollidingRoutesAreStartupErrorsNamingBoth) {
  try {
    Router r({{"/items/<int:id>", {"GET"}, ""}, {"/items/<int:item_id>", {"GET", "PUT"}, ""}});
    FAIL() << "collision accepted";
  } catch (const StartupError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/items/<int:id>"), std::string::npos) << what;
    EXPECT_NE(what.find("/items/<int:item_id>"), std::string::npos) << what;
  }
  EXPECT_THROW(Router({{"/a/<x>", {"GET"}, ""}, {"/a/<str:y>", {"GET"}, ""}}), StartupError);
  EXPECT_THROW(Router({{"/same", {"GET"}, ""}, {"/same", {"POST", "GET"}, ""}}), StartupError);
  EXPECT_NO_THROW(Router({{"/a/<int:x>", {"GET"}, ""}, {"/a/<x>", {"GET"}, ""}}));
}

TEST(RouterCatchAll, AWsgiAppGetsEverythingButTheBuiltins) {
  Router r({{"*", {}, "WSGI application app:app"}});
  for (const char* path : {"/", "/anything", "/a/b?c", "/healthzz"}) {
    auto m = r.match("PATCH", path);
    EXPECT_EQ(m.result, RouteMatch::Result::found) << path;
    EXPECT_EQ(m.builtin, Builtin::none) << path;
    EXPECT_EQ(m.route_index, 0u);
  }
  EXPECT_EQ(r.match("GET", "/healthz").builtin, Builtin::healthz);
  EXPECT_EQ(r.match("GET", "/stats").builtin, Builtin::stats);
  EXPECT_EQ(r.match("POST", "/metrics").result, RouteMatch::Result::method_not_allowed);
}

// Maps (method, path) to a built-in endpoint or a Python route, and answers
// 404/405 decisions without touching Python. The one place route patterns are
// parsed and matched:
//
//   /items                 an exact path
//   /items/<int:item_id>   one segment per parameter; converters str (default:
//   /files/<path:name>     one non-empty segment), int ([0-9]+), float
//                          ([0-9]+ or [0-9]+.[0-9]+) and path (the non-empty
//                          rest, slashes included; last segment only)
//   *                      everything not built in (a WSGI app)
//
// An exact path wins over a pattern, and patterns are tried most specific
// first (a literal segment before int, float, str, path), skipping those that
// do not allow the method; a path that some route matches but none with that
// method is 405. Two patterns of the same shape with a method in common, or a
// pattern that cannot be parsed, are a start-up error naming them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh {

enum class Builtin { none, healthz, readyz, stats, metrics, index, dashboard, events };

struct RouteMatch {
  enum class Result { found, not_found, method_not_allowed } result = Result::not_found;
  Builtin builtin = Builtin::none;  // found and none: a Python route
  std::size_t route_index = 0;
  std::string allow;               // for 405: "GET, HEAD"
  std::vector<PathParam> params;   // what a pattern route captured
};

class Router {
 public:
  // Built-in paths /healthz, /readyz, /stats and /metrics (and /dashboard and
  // /events with `dashboard`) are reserved; "/" is the route index unless the
  // app registers "/" itself (or is a WSGI app). Throws StartupError if the app
  // registers a reserved path, a pattern that cannot be parsed, or two routes
  // that collide.
  explicit Router(const std::vector<RouteInfo>& python_routes, bool dashboard = true);
  // HEAD matches wherever GET does.
  RouteMatch match(std::string_view method, const std::string& path) const;

 private:
  using MethodTargets = std::vector<std::pair<std::string, std::size_t>>;  // method -> route index

  struct PathEntry {
    Builtin builtin = Builtin::none;
    MethodTargets methods;
    std::string allow;
  };

  struct Segment {
    enum class Kind { literal, integer, number, string, path } kind = Kind::literal;
    std::string literal;
  };

  struct PatternEntry {
    std::vector<Segment> segments;
    MethodTargets methods;
    std::string allow;
    std::vector<std::string> registered_as;  // per entry of `methods`, for messages
  };

  // The steps of the constructor, in its order.
  void add_builtins(bool dashboard);
  // An exact path: a reserved one, or a method registered twice for it, throws.
  void index_exact_path(const RouteInfo& route, std::size_t index);
  // "/a/<int:b>" as segments; appends the parameter names to `names`.
  static std::vector<Segment> parse_pattern(const std::string& path, std::vector<std::string>& names);
  // One "<name>" or "<converter:name>" segment of `path`.
  static Segment parse_parameter(const std::string& path, std::string_view text, std::vector<std::string>& names);
  static StartupError invalid_pattern(const std::string& path, const std::string& why);
  // Joins the entry of the same shape, if any: a method registered on both throws.
  void index_pattern(std::vector<Segment> segments, const RouteInfo& route, std::size_t index);
  // The Allow value of each Python route's path and pattern (built-ins have theirs).
  void finish_allow_lists();
  void sort_patterns();

  // Captured text of each parameter segment, in order, if `path` fits.
  static bool fits(const PatternEntry& pattern, std::string_view path,
                   std::vector<std::string_view>& captured);

  std::unordered_map<std::string, PathEntry> paths_;
  std::vector<PatternEntry> patterns_;                  // most specific first
  std::vector<std::vector<std::string>> param_names_;   // per route index
  std::optional<std::size_t> catch_all_;                // the route of "*"
};

}  // namespace gilgamesh

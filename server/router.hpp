// Maps (method, path) to a built-in endpoint or a Python route, and answers
// 404/405 decisions without touching Python.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../pyworkers/executor.hpp"

namespace gilgamesh {

enum class Builtin { none, healthz, stats, metrics, index, dashboard, events };

struct RouteMatch {
  enum class Result { found, not_found, method_not_allowed } result = Result::not_found;
  Builtin builtin = Builtin::none;  // found and none: a Python route
  std::size_t route_index = 0;
  std::string allow;               // for 405: "GET, HEAD"
};

class Router {
 public:
  // Built-in paths /healthz, /stats and /metrics (and /dashboard and /events
  // with `dashboard`) are reserved; "/" is the route index unless the app
  // registers "/" itself. Throws StartupError if the app registers a reserved path.
  explicit Router(const std::vector<RouteInfo>& python_routes, bool dashboard = true);
  // HEAD matches wherever GET does.
  RouteMatch match(std::string_view method, const std::string& path) const;

 private:
  struct PathEntry {
    Builtin builtin = Builtin::none;
    std::vector<std::pair<std::string, std::size_t>> methods;  // method -> route index
    std::string allow;
  };
  std::unordered_map<std::string, PathEntry> paths_;
};

}  // namespace gilgamesh

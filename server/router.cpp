#include "router.hpp"

#include <algorithm>

namespace gilgamesh {

namespace {
void finish_allow(std::string& allow, const std::vector<std::string>& methods) {
  std::vector<std::string> all = methods;
  if (std::find(all.begin(), all.end(), "GET") != all.end() &&
      std::find(all.begin(), all.end(), "HEAD") == all.end()) {
    all.emplace_back("HEAD");
  }
  allow.clear();
  for (const auto& m : all) allow += (allow.empty() ? "" : ", ") + m;
}
}  // namespace

Router::Router(const std::vector<RouteInfo>& python_routes, bool dashboard) {
  for (auto [path, builtin] : {std::pair{"/healthz", Builtin::healthz},
                               std::pair{"/stats", Builtin::stats},
                               std::pair{"/metrics", Builtin::metrics}}) {
    paths_[path] = PathEntry{builtin, {}, "GET, HEAD"};
  }
  if (dashboard) {
    paths_["/dashboard"] = PathEntry{Builtin::dashboard, {}, "GET, HEAD"};
    paths_["/events"] = PathEntry{Builtin::events, {}, "GET, HEAD"};
  }
  for (std::size_t i = 0; i < python_routes.size(); ++i) {
    const RouteInfo& r = python_routes[i];
    auto& entry = paths_[r.path];
    if (entry.builtin != Builtin::none) {
      throw StartupError("route " + r.path + " is reserved for the built-in endpoint; pick another path");
    }
    for (const auto& m : r.methods) entry.methods.emplace_back(m, i);
  }
  for (auto& [path, entry] : paths_) {
    if (entry.builtin != Builtin::none) continue;
    std::vector<std::string> names;
    for (const auto& [m, i] : entry.methods) names.push_back(m);
    finish_allow(entry.allow, names);
  }
  if (paths_.find("/") == paths_.end()) paths_["/"] = PathEntry{Builtin::index, {}, "GET, HEAD"};
}

RouteMatch Router::match(std::string_view method, const std::string& path) const {
  RouteMatch out;
  auto it = paths_.find(path);
  if (it == paths_.end()) return out;
  const PathEntry& entry = it->second;
  out.allow = entry.allow;
  if (entry.builtin != Builtin::none) {
    if (method == "GET" || method == "HEAD") {
      out.result = RouteMatch::Result::found;
      out.builtin = entry.builtin;
    } else {
      out.result = RouteMatch::Result::method_not_allowed;
    }
    return out;
  }
  const std::pair<std::string, std::size_t>* get = nullptr;
  for (const auto& m : entry.methods) {
    if (m.first == method) {
      out.result = RouteMatch::Result::found;
      out.route_index = m.second;
      return out;
    }
    if (m.first == "GET") get = &m;
  }
  if (method == "HEAD" && get != nullptr) {
    out.result = RouteMatch::Result::found;
    out.route_index = get->second;
    return out;
  }
  out.result = RouteMatch::Result::method_not_allowed;
  return out;
}

}  // namespace gilgamesh

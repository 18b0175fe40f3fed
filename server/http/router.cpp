#include "server/http/router.hpp"

#include <algorithm>

namespace gilgamesh {

namespace {

// Longer int literals cannot become a Python int (sys.int_info.default_max_str_digits).
constexpr std::size_t kMaxIntDigits = 4300;

void finish_allow(std::string& allow, const std::vector<std::string>& methods) {
  std::vector<std::string> all = methods;
  if (std::find(all.begin(), all.end(), "GET") != all.end() &&
      std::find(all.begin(), all.end(), "HEAD") == all.end()) {
    all.emplace_back("HEAD");
  }
  allow.clear();
  for (const auto& m : all) allow += (allow.empty() ? "" : ", ") + m;
}

bool is_identifier(std::string_view s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Splits "/a/b/" into "a", "b", "".
std::vector<std::string_view> split_segments(std::string_view path) {
  std::vector<std::string_view> out;
  std::size_t at = 1;  // after the leading '/'
  for (;;) {
    const std::size_t slash = path.find('/', at);
    if (slash == std::string_view::npos) {
      out.push_back(path.substr(std::min(at, path.size())));
      return out;
    }
    out.push_back(path.substr(at, slash - at));
    at = slash + 1;
  }
}

const std::pair<std::string, std::size_t>* pick(const std::vector<std::pair<std::string, std::size_t>>& targets,
                                                std::string_view method) {
  const std::pair<std::string, std::size_t>* get = nullptr;
  for (const auto& m : targets) {
    if (m.first == method) return &m;
    if (m.first == "GET") get = &m;
  }
  return method == "HEAD" ? get : nullptr;
}

}  // namespace

Router::Router(const std::vector<RouteInfo>& python_routes, bool dashboard) {
  add_builtins(dashboard);
  param_names_.resize(python_routes.size());
  for (std::size_t i = 0; i < python_routes.size(); ++i) {
    const RouteInfo& r = python_routes[i];
    if (r.path == "*") {
      if (catch_all_) throw StartupError("route * is registered twice");
      catch_all_ = i;
    } else if (r.path.empty() || r.path[0] != '/') {
      throw invalid_pattern(r.path, "it must start with '/'");
    } else if (r.path.find_first_of("<>") == std::string::npos) {
      index_exact_path(r, i);
    } else {
      index_pattern(parse_pattern(r.path, param_names_[i]), r, i);
    }
  }
  finish_allow_lists();
  sort_patterns();
  if (!catch_all_ && paths_.find("/") == paths_.end()) {
    paths_["/"] = PathEntry{Builtin::index, {}, "GET, HEAD"};
  }
}

void Router::add_builtins(bool dashboard) {
  for (auto [path, builtin] : {std::pair{"/healthz", Builtin::healthz},
                               std::pair{"/readyz", Builtin::readyz},
                               std::pair{"/stats", Builtin::stats},
                               std::pair{"/metrics", Builtin::metrics}}) {
    paths_[path] = PathEntry{builtin, {}, "GET, HEAD"};
  }
  if (dashboard) {
    paths_["/dashboard"] = PathEntry{Builtin::dashboard, {}, "GET, HEAD"};
    paths_["/events"] = PathEntry{Builtin::events, {}, "GET, HEAD"};
  }
}

void Router::index_exact_path(const RouteInfo& r, std::size_t index) {
  auto& entry = paths_[r.path];
  if (entry.builtin != Builtin::none) {
    throw StartupError("route " + r.path + " is reserved for the built-in endpoint; pick another path");
  }
  for (const auto& m : r.methods) {
    for (const auto& [known, earlier] : entry.methods) {
      if (known == m) {
        throw StartupError("routes " + m + " " + r.path + " (#" + std::to_string(earlier) + ") and " + m +
                           " " + r.path + " (#" + std::to_string(index) + ") collide: the same method and path");
      }
    }
    entry.methods.emplace_back(m, index);
  }
}

StartupError Router::invalid_pattern(const std::string& path, const std::string& why) {
  return StartupError("route pattern " + path + " is not valid: " + why);
}

std::vector<Router::Segment> Router::parse_pattern(const std::string& path, std::vector<std::string>& names) {
  std::vector<Segment> segments;
  for (std::string_view text : split_segments(path)) {
    if (!segments.empty() && segments.back().kind == Segment::Kind::path) {
      throw invalid_pattern(path, "a <path:...> parameter must be the last segment");
    }
    if (text.find_first_of("<>") == std::string_view::npos) {
      segments.push_back({Segment::Kind::literal, std::string(text)});
    } else {
      segments.push_back(parse_parameter(path, text, names));
    }
  }
  return segments;
}

Router::Segment Router::parse_parameter(const std::string& path, std::string_view text,
                                        std::vector<std::string>& names) {
  if (text.size() < 3 || text.front() != '<' || text.back() != '>' ||
      text.substr(1, text.size() - 2).find_first_of("<>") != std::string_view::npos) {
    throw invalid_pattern(path, "'" + std::string(text) +
                                    "': a parameter must fill a whole segment, as <name> or <converter:name>");
  }
  std::string_view inner = text.substr(1, text.size() - 2);
  std::string_view converter = "str";
  std::string_view name = inner;
  if (auto colon = inner.find(':'); colon != std::string_view::npos) {
    converter = inner.substr(0, colon);
    name = inner.substr(colon + 1);
  }
  if (!is_identifier(name)) {
    throw invalid_pattern(path, "'" + std::string(text) + "': '" + std::string(name) + "' is not a Python identifier");
  }
  Segment seg;
  if (converter == "str") {
    seg.kind = Segment::Kind::string;
  } else if (converter == "int") {
    seg.kind = Segment::Kind::integer;
  } else if (converter == "float") {
    seg.kind = Segment::Kind::number;
  } else if (converter == "path") {
    seg.kind = Segment::Kind::path;
  } else {
    throw invalid_pattern(path, "'" + std::string(text) + "': unknown converter '" + std::string(converter) +
                                    "' (known: str, int, float, path)");
  }
  if (std::find(names.begin(), names.end(), name) != names.end()) {
    throw invalid_pattern(path, "parameter '" + std::string(name) + "' appears twice");
  }
  names.emplace_back(name);
  return seg;
}

void Router::index_pattern(std::vector<Segment> segments, const RouteInfo& r, std::size_t index) {
  auto same_shape = [&segments](const PatternEntry& p) {
    if (p.segments.size() != segments.size()) return false;
    for (std::size_t s = 0; s < segments.size(); ++s) {
      if (p.segments[s].kind != segments[s].kind || p.segments[s].literal != segments[s].literal) return false;
    }
    return true;
  };
  auto it = std::find_if(patterns_.begin(), patterns_.end(), same_shape);
  if (it == patterns_.end()) {
    patterns_.push_back(PatternEntry{std::move(segments), {}, {}, {}});
    it = std::prev(patterns_.end());
  }
  for (const auto& m : r.methods) {
    for (std::size_t k = 0; k < it->methods.size(); ++k) {
      if (it->methods[k].first == m) {
        throw StartupError("routes " + m + " " + it->registered_as[k] + " and " + m + " " + r.path +
                           " collide: they match the same paths; give them different shapes or methods");
      }
    }
    it->methods.emplace_back(m, index);
    it->registered_as.push_back(r.path);
  }
}

void Router::finish_allow_lists() {
  auto method_names = [](const MethodTargets& targets) {
    std::vector<std::string> names;
    for (const auto& [m, i] : targets) names.push_back(m);
    return names;
  };
  for (auto& [path, entry] : paths_) {
    if (entry.builtin == Builtin::none) finish_allow(entry.allow, method_names(entry.methods));
  }
  for (auto& p : patterns_) finish_allow(p.allow, method_names(p.methods));
}

// Most specific first: literal < int < float < str < path, segment by segment.
void Router::sort_patterns() {
  std::stable_sort(patterns_.begin(), patterns_.end(), [](const PatternEntry& a, const PatternEntry& b) {
    return std::lexicographical_compare(a.segments.begin(), a.segments.end(), b.segments.begin(),
                                        b.segments.end(), [](const Segment& x, const Segment& y) {
                                          return x.kind < y.kind;
                                        });
  });
}

bool Router::fits(const PatternEntry& pattern, std::string_view path,
                  std::vector<std::string_view>& captured) {
  captured.clear();
  std::size_t at = 1;  // start of the current segment, after its '/'
  const std::size_t n = pattern.segments.size();
  for (std::size_t s = 0; s < n; ++s) {
    if (at > path.size()) return false;  // the path has fewer segments
    const Segment& seg = pattern.segments[s];
    if (seg.kind == Segment::Kind::path) {
      std::string_view rest = path.substr(at);
      if (rest.empty()) return false;
      captured.push_back(rest);
      return true;
    }
    std::size_t end = path.find('/', at);
    if (end == std::string_view::npos) end = path.size();
    std::string_view text = path.substr(at, end - at);
    const bool last = s + 1 == n;
    if (last != (end == path.size())) return false;  // more, or fewer, segments than the pattern
    switch (seg.kind) {
      case Segment::Kind::literal:
        if (text != seg.literal) return false;
        break;
      case Segment::Kind::integer:
        if (!all_digits(text) || text.size() > kMaxIntDigits) return false;
        captured.push_back(text);
        break;
      case Segment::Kind::number: {
        const std::size_t dot = text.find('.');
        if (!all_digits(text.substr(0, dot)) ||
            (dot != std::string_view::npos && !all_digits(text.substr(dot + 1)))) {
          return false;
        }
        captured.push_back(text);
        break;
      }
      case Segment::Kind::string:
        if (text.empty()) return false;
        captured.push_back(text);
        break;
      case Segment::Kind::path:
        break;  // handled above
    }
    at = end + 1;
  }
  return true;
}

RouteMatch Router::match(std::string_view method, const std::string& path) const {
  RouteMatch out;
  std::vector<std::string> allowed;  // methods of routes that match the path, for a 405
  auto note_allowed = [&allowed](const MethodTargets& targets) {
    for (const auto& [m, i] : targets) {
      if (std::find(allowed.begin(), allowed.end(), m) == allowed.end()) allowed.push_back(m);
    }
  };

  if (auto it = paths_.find(path); it != paths_.end()) {
    const PathEntry& entry = it->second;
    if (entry.builtin != Builtin::none) {
      out.allow = entry.allow;
      if (method == "GET" || method == "HEAD") {
        out.result = RouteMatch::Result::found;
        out.builtin = entry.builtin;
      } else {
        out.result = RouteMatch::Result::method_not_allowed;
      }
      return out;
    }
    if (const auto* target = pick(entry.methods, method)) {
      out.result = RouteMatch::Result::found;
      out.route_index = target->second;
      return out;
    }
    if (patterns_.empty() && !catch_all_) {
      out.result = RouteMatch::Result::method_not_allowed;
      out.allow = entry.allow;
      return out;
    }
    note_allowed(entry.methods);
  }

  if (!patterns_.empty() && !path.empty() && path[0] == '/') {
    std::vector<std::string_view> captured;
    for (const PatternEntry& p : patterns_) {
      if (!fits(p, path, captured)) continue;
      const auto* target = pick(p.methods, method);
      if (!target) {
        note_allowed(p.methods);
        continue;
      }
      out.result = RouteMatch::Result::found;
      out.route_index = target->second;
      const auto& names = param_names_[target->second];
      out.params.reserve(captured.size());
      std::size_t k = 0;
      for (const Segment& seg : p.segments) {
        if (seg.kind == Segment::Kind::literal) continue;
        PathParam param;
        param.name = names[k];
        param.value = std::string(captured[k]);
        param.converter = seg.kind == Segment::Kind::integer ? PathParam::Converter::integer
                          : seg.kind == Segment::Kind::number ? PathParam::Converter::number
                          : seg.kind == Segment::Kind::path   ? PathParam::Converter::path
                                                              : PathParam::Converter::string;
        out.params.push_back(std::move(param));
        ++k;
      }
      return out;
    }
  }

  if (catch_all_) {
    out.result = RouteMatch::Result::found;
    out.route_index = *catch_all_;
    return out;
  }
  if (!allowed.empty()) {
    out.result = RouteMatch::Result::method_not_allowed;
    finish_allow(out.allow, allowed);
  }
  return out;
}

}  // namespace gilgamesh

#include "builtins.hpp"

#include <unistd.h>

namespace gilgamesh {

namespace {
// The app's routes, once the workers are up (none before).
const std::vector<RouteInfo>& routes_of(const ServerView& v) {
  static const std::vector<RouteInfo> kNone;
  return v.routes_ready ? v.executor.routes() : kNone;
}
}  // namespace

nlohmann::json stats_json(const ServerView& v) {
  ExecutorInfo info = v.executor.info();
  nlohmann::json live = v.executor.stats();
  nlohmann::json routes = nlohmann::json::object();
  const auto& infos = routes_of(v);
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const RouteCounters& r = v.stats.route(i);
    std::string key;
    for (const auto& m : infos[i].methods) key += (key.empty() ? "" : ",") + m;
    key += (key.empty() ? "" : " ") + infos[i].path;  // a WSGI app's one route: "*"
    routes[key] = {{"path", infos[i].path},
                   {"methods", infos[i].methods},
                   {"count", r.count.load()},
                   {"errors", r.errors.load()},
                   {"client_errors", r.client_errors.load()},
                   {"p50_ms", r.latency.quantile_ms(0.50)},
                   {"p99_ms", r.latency.quantile_ms(0.99)},
                   {"mean_ms", r.latency.mean_ms()}};
  }
  nlohmann::json out = {
      {"strategy", info.strategy},
      {"workers", info.workers},
      {"python_version", info.python_version},
      {"build", info.build},
      {"gil_enabled", info.gil_enabled},
      {"app", v.config.app},
      {"pid", getpid()},
      {"uptime_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - v.started_at).count()},
      {"shutting_down", v.shutting_down},
      {"connections_open", v.stats.connections_open.load()},
      {"connections_accepted", v.stats.connections_accepted.load()},
      {"rejected_queue_full", v.stats.rejected_queue_full.load()},
      {"deadline_exceeded", v.stats.deadline_exceeded.load()},
      {"responses", {{"1xx", v.stats.responses(1)}, {"2xx", v.stats.responses(2)}, {"3xx", v.stats.responses(3)},
                     {"4xx", v.stats.responses(4)}, {"5xx", v.stats.responses(5)}}},
      {"routes", std::move(routes)}};
  for (auto& [key, value] : live.items()) out[key] = value;
  return out;
}

std::string metrics_text(const ServerView& v) {
  std::string out;
  auto line = [&out](const std::string& s) { out += s; out += '\n'; };
  ExecutorInfo info = v.executor.info();
  nlohmann::json live = v.executor.stats();
  line("# HELP gilgamesh_info Strategy and Python build.");
  line("# TYPE gilgamesh_info gauge");
  line("gilgamesh_info{strategy=\"" + info.strategy + "\",build=\"" + info.build + "\",python=\"" +
       info.python_version + "\",gil_enabled=\"" + (info.gil_enabled ? "true" : "false") + "\"} 1");
  line("# TYPE gilgamesh_workers gauge");
  line("gilgamesh_workers " + std::to_string(info.workers));
  line("# TYPE gilgamesh_busy_workers gauge");
  line("gilgamesh_busy_workers " + live.value("busy_workers", nlohmann::json(0)).dump());
  line("# TYPE gilgamesh_queue_depth gauge");
  line("gilgamesh_queue_depth " + live.value("queue_depth", nlohmann::json(0)).dump());
  line("# TYPE gilgamesh_connections_open gauge");
  line("gilgamesh_connections_open " + std::to_string(v.stats.connections_open.load()));
  line("# TYPE gilgamesh_responses_total counter");
  for (int c = 1; c <= 5; ++c) {
    line("gilgamesh_responses_total{class=\"" + std::to_string(c) + "xx\"} " + std::to_string(v.stats.responses(c)));
  }
  line("# TYPE gilgamesh_rejected_total counter");
  line("gilgamesh_rejected_total{reason=\"queue_full\"} " + std::to_string(v.stats.rejected_queue_full.load()));
  line("gilgamesh_rejected_total{reason=\"deadline\"} " + std::to_string(v.stats.deadline_exceeded.load()));
  line("# TYPE gilgamesh_route_requests_total counter");
  line("# TYPE gilgamesh_route_latency_seconds summary");
  const auto& infos = routes_of(v);
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const RouteCounters& r = v.stats.route(i);
    std::string label = "route=\"" + infos[i].path + "\"";
    line("gilgamesh_route_requests_total{" + label + "} " + std::to_string(r.count.load()));
    line("gilgamesh_route_errors_total{" + label + "} " + std::to_string(r.errors.load()));
    for (double q : {0.5, 0.9, 0.99}) {
      line("gilgamesh_route_latency_seconds{" + label + ",quantile=\"" + std::to_string(q).substr(0, 4) +
           "\"} " + std::to_string(r.latency.quantile_ms(q) / 1000.0));
    }
  }
  return out;
}

nlohmann::json index_json(const ServerView& v) {
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : routes_of(v)) {
    routes.push_back({{"methods", r.methods}, {"path", r.path}, {"doc", r.doc}});
  }
  for (auto [path, doc] : {std::pair{"/healthz", "Liveness: 200 {\"status\": \"ok\"} while serving."},
                           std::pair{"/readyz", "Readiness: 200 when workers can take requests, else 503 with the reason."},
                           std::pair{"/stats", "Strategy, build, workers, queue and per-route latency as JSON."},
                           std::pair{"/metrics", "The same figures in Prometheus text format."}}) {
    routes.push_back({{"methods", {"GET"}}, {"path", path}, {"doc", doc}, {"builtin", true}});
  }
  return {{"app", v.config.app}, {"strategy", v.config.strategy}, {"routes", std::move(routes)}};
}

}  // namespace gilgamesh

// What the server reports about itself, each a pure function of a snapshot of
// its state: /stats (JSON, also each /events snapshot the dashboard draws) and
// /metrics (Prometheus text). Answered by the I/O threads, never queued behind
// Python.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "server/model/executor.hpp"
#include "server/model/options.hpp"
#include "server/observation/stats.hpp"

namespace gilgamesh {

// What the built-in endpoints read. References stay valid while the server runs.
struct ServerView {
  const ServerConfig& config;
  const Executor& executor;
  const ServerStats& stats;
  std::chrono::steady_clock::time_point started_at;
  bool shutting_down;
  bool routes_ready;  // the workers are up: executor.routes() and the route counters are valid

  // The app's routes, once the workers are up (none before).
  const std::vector<RouteInfo>& routes() const {
    static const std::vector<RouteInfo> kNone;
    return routes_ready ? executor.routes() : kNone;
  }
};

// /stats, also each snapshot of /events. Latencies in ms rounded to the
// microsecond; quantiles are null for a route that has served nothing.
nlohmann::json stats_json(const ServerView& v);
// /metrics: Prometheus text format 0.0.4, every family contiguous, with
// # HELP and # TYPE; the same counts as stats_json.
std::string metrics_text(const ServerView& v);

}  // namespace gilgamesh

// The built-in endpoints answered by the I/O threads, never queued behind
// Python: /stats (JSON), /metrics (Prometheus text) and the route index /.
// Each is a pure function of a snapshot of the server's state. The dashboard
// page and its event stream live in dashboard.hpp and events.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>

#include "../pyworkers/executor.hpp"
#include "config.hpp"
#include "stats.hpp"

namespace gilgamesh {

// What the built-in endpoints read. References stay valid while the server runs.
struct ServerView {
  const ServerConfig& config;
  const Executor& executor;
  const ServerStats& stats;
  std::chrono::steady_clock::time_point started_at;
  bool shutting_down;
  bool routes_ready;  // the workers are up: executor.routes() and the route counters are valid
};

// /stats, also each snapshot of /events. Latencies in ms rounded to the
// microsecond; quantiles are null for a route that has served nothing.
nlohmann::json stats_json(const ServerView& v);
// /metrics: Prometheus text format 0.0.4, every family contiguous, with
// # HELP and # TYPE; the same counts as stats_json.
std::string metrics_text(const ServerView& v);
nlohmann::json index_json(const ServerView& v);

}  // namespace gilgamesh

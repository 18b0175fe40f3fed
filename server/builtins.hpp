// The built-in endpoints answered by the I/O threads, never queued behind
// Python: /stats (JSON), /metrics (Prometheus text) and the route index /.
// Each is a pure function of a snapshot of the server's state.
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

nlohmann::json stats_json(const ServerView& v);
std::string metrics_text(const ServerView& v);
nlohmann::json index_json(const ServerView& v);

}  // namespace gilgamesh

#include "server/http/builtins.hpp"

#include <utility>
#include <vector>

#include "server/model/response.hpp"
#include "server/observation/dashboard.hpp"

namespace gilgamesh {

namespace {

namespace http = boost::beast::http;
using exchange::Answer;

// The JSON text of a built-in endpoint; strings that are not UTF-8 are replaced, never thrown on.
std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Answer json_answer(http::status status, std::string body) {
  Answer a;
  a.response.status = static_cast<int>(status);
  a.response.content_type = "application/json";
  a.response.body = std::move(body);
  return a;
}

Answer healthz(bool draining) {
  if (draining) return json_answer(http::status::service_unavailable, R"({"status": "shutting_down"})");
  return json_answer(http::status::ok, R"({"status": "ok"})");
}

Answer readyz(const ServerView& view) {
  // The pool is up a moment before the app's router is installed: not ready until both.
  const Readiness r = view.shutting_down  ? Readiness{Readiness::State::stopping, "the server is shutting down"}
                      : !view.routes_ready ? Readiness{Readiness::State::starting, "workers are starting"}
                                           : view.executor.readiness();
  if (r.ready()) return json_answer(http::status::ok, R"({"status": "ready"})");
  Answer a = json_answer(http::status::service_unavailable,
                         json_text({{"status", Readiness::name(r.state)}, {"reason", r.reason}}));
  a.response.headers.push_back({"Retry-After", "1"});
  return a;
}

Answer metrics(const ServerView& view) {
  Answer a;
  a.response.content_type = "text/plain; version=0.0.4; charset=utf-8";
  a.response.body = metrics_text(view);
  return a;
}

Answer dashboard() {
  Answer a;
  a.response.content_type = "text/html; charset=utf-8";
  a.response.body = std::string(dashboard_page());
  a.response.headers = dashboard_headers();
  return a;
}

// GET /events: the session hands its socket to the event streams; HEAD gets the headers only.
Answer events(const ServerView& view, bool head, const std::string& request_id) {
  if (view.shutting_down) {
    return Answer{make_error_response(503, "server is shutting down", request_id), true};
  }
  Answer a;
  a.response.content_type = "text/event-stream";
  a.event_stream = !head;
  return a;
}

}  // namespace

nlohmann::json index_json(const ServerView& v) {
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : v.routes()) {
    routes.push_back({{"methods", r.methods}, {"path", r.path}, {"doc", r.doc}});
  }
  std::vector<std::pair<const char*, const char*>> builtins = {
      {"/healthz", "Liveness: 200 {\"status\": \"ok\"} while serving."},
      {"/readyz", "Readiness: 200 when workers can take requests, else 503 with the reason."},
      {"/stats", "Strategy, build, workers, queue and per-route latency as JSON."},
      {"/metrics", "The same figures in Prometheus text format."}};
  if (v.config.http.dashboard) {
    builtins.emplace_back("/dashboard", "Live dashboard: throughput, latency, queue, workers, routes (open in a browser).");
    builtins.emplace_back("/events", "The /stats snapshot once a second as server-sent events (text/event-stream).");
  }
  for (auto [path, doc] : builtins) {
    routes.push_back({{"methods", {"GET"}}, {"path", path}, {"doc", doc}, {"builtin", true}});
  }
  return {{"app", v.config.app.target},
          {"strategy", strategy_name(v.executor.info().strategy)},
          {"routes", std::move(routes)}};
}

Answer builtin_answer(Builtin which, const ServerView& view, bool draining, bool head,
                      const std::string& request_id) {
  switch (which) {
    case Builtin::healthz: return healthz(draining);
    case Builtin::readyz: return readyz(view);
    case Builtin::stats: return json_answer(http::status::ok, json_text(stats_json(view)));
    case Builtin::metrics: return metrics(view);
    case Builtin::index: return json_answer(http::status::ok, json_text(index_json(view)));
    case Builtin::dashboard: return dashboard();
    case Builtin::events: return events(view, head, request_id);
    case Builtin::none: break;
  }
  return Answer{make_error_response(500, "internal server error", request_id), false};  // not a built-in
}

}  // namespace gilgamesh

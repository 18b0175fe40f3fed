#include "server/observation/metrics.hpp"

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "server/model/response.hpp"

namespace gilgamesh {

namespace {

// x rounded to `decimals` places, as the double nearest that decimal (so JSON
// prints 3.413, not 3.4130000000000003).
double round_to(double x, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(x * scale) / scale;
}

// Milliseconds to the microsecond.
double round_ms(double ms) { return round_to(ms, 3); }

// The methods of a route as one label value / key part: "GET,POST" (none for
// a WSGI app's one route, "*").
std::string methods_text(const RouteInfo& r) {
  std::string out;
  for (const auto& m : r.methods) out += (out.empty() ? "" : ",") + m;
  return out;
}

// The aggregate of every Python route's latency, for the dashboard's windowed
// quantiles: the fine buckets that hold anything, as [upper_ms, count].
nlohmann::json latency_buckets(const ServerView& v) {
  std::array<std::uint64_t, LatencyHistogram::kBuckets> counts{};
  for (std::size_t r = 0; r < v.routes().size(); ++r) {
    const auto& h = v.stats.route(r).latency;
    for (int i = 0; i < LatencyHistogram::kBuckets; ++i) counts[static_cast<std::size_t>(i)] += h.bucket_count(i);
  }
  nlohmann::json buckets = nlohmann::json::array();
  std::uint64_t total = 0;
  for (int i = 0; i < LatencyHistogram::kBuckets; ++i) {
    auto c = counts[static_cast<std::size_t>(i)];
    if (c == 0) continue;
    total += c;
    buckets.push_back({i, c});
  }
  return {{"first_upper_ms", LatencyHistogram::bucket_upper_ms(0)},
          {"growth", LatencyHistogram::bucket_upper_ms(1) / LatencyHistogram::bucket_upper_ms(0)},
          {"count", total},
          {"buckets", std::move(buckets)}};
}

// --- Prometheus text format 0.0.4 -----------------------------------------

std::string number_text(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  return ec == std::errc() ? std::string(buf, end) : "NaN";
}

// A bucket bound as people write it: 0.000025, not 2.5e-05.
std::string bound_text(double x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::fixed);
  return ec == std::errc() ? std::string(buf, end) : number_text(x);
}

std::string number_text(std::uint64_t x) { return std::to_string(x); }
std::string number_text(std::int64_t x) { return std::to_string(x); }

using Labels = std::vector<std::pair<std::string_view, std::string>>;

// Writes families one at a time: every sample of a family follows its
// # HELP and # TYPE lines, so no family is ever split.
class PrometheusText {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    name_ = name;
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    for (char c : help) {
      if (c == '\\') out_ += "\\\\";
      else if (c == '\n') out_ += "\\n";
      else out_ += c;
    }
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  // A sample of the current family; `suffix` is "", "_bucket", "_sum" or "_count".
  template <typename Number>
  void sample(const Labels& labels, Number value, std::string_view suffix = "") {
    out_ += name_;
    out_ += suffix;
    if (!labels.empty()) {
      out_ += '{';
      bool first = true;
      for (const auto& [key, val] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += key;
        out_ += "=\"";
        // Route paths come from the app: invalid UTF-8 becomes U+FFFD.
        for (char c : replace_invalid_utf8(val)) {
          if (c == '\\') out_ += "\\\\";
          else if (c == '"') out_ += "\\\"";
          else if (c == '\n') out_ += "\\n";
          else out_ += c;
        }
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += number_text(value);
    out_ += '\n';
  }

  // A family with one unlabelled sample.
  template <typename Number>
  void single(std::string_view name, std::string_view type, std::string_view help, Number value) {
    family(name, type, help);
    sample({}, value);
  }

  std::string take() { return std::move(out_); }

 private:
  std::string out_;
  std::string name_;
};

}  // namespace

nlohmann::json stats_json(const ServerView& v) {
  ExecutorInfo info = v.executor.info();
  const nlohmann::json pool = v.executor.stats();
  ProcessFigures proc = read_process_figures();
  nlohmann::json routes = nlohmann::json::object();
  const auto& infos = v.routes();
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const RouteCounters& r = v.stats.route(i);
    const std::uint64_t count = r.latency.count();
    auto ms = [count](double x) { return count == 0 ? nlohmann::json(nullptr) : nlohmann::json(round_ms(x)); };
    const std::string methods = methods_text(infos[i]);
    routes[methods + (methods.empty() ? "" : " ") + infos[i].path] = {
        {"path", infos[i].path},
        {"methods", infos[i].methods},
        {"doc", infos[i].doc},
        {"count", r.count.load()},
        {"errors", r.errors.load()},
        {"client_errors", r.client_errors.load()},
        {"p50_ms", ms(r.latency.quantile_ms(0.50))},
        {"p99_ms", ms(r.latency.quantile_ms(0.99))},
        {"mean_ms", ms(r.latency.mean_ms())}};
  }
  nlohmann::json out = {
      {"version", GILGAMESH_VERSION},
      {"strategy", strategy_name(info.strategy)},
      {"strategy_auto", info.strategy_reason.empty() ? nlohmann::json() : nlohmann::json(info.strategy_reason)},
      {"workers", info.workers},
      {"python_version", info.python_version},
      {"build", python_build_name(info.build)},
      {"gil_enabled", info.gil_enabled},
      {"app", v.config.app.target},
      {"pid", getpid()},
      {"uptime_s", round_to(std::chrono::duration<double>(std::chrono::steady_clock::now() - v.started_at).count(), 3)},
      {"shutting_down", v.shutting_down},
      {"rss_bytes", proc.rss_bytes},
      {"cpu_seconds", round_to(proc.cpu_seconds, 2)},
      {"open_fds", proc.open_fds},
      {"connections_open", v.stats.connections_open.load()},
      {"connections_accepted", v.stats.connections_accepted.load()},
      {"connections_rejected", v.stats.connections_rejected.load()},
      {"accept_errors", v.stats.accept_errors.load()},
      {"event_streams", v.stats.event_streams_open.load()},
      {"websockets", v.stats.websockets_open.load()},
      {"rejected_queue_full", v.stats.rejected_queue_full.load()},
      {"deadline_exceeded", v.stats.deadline_exceeded.load()},
      {"responses", {{"1xx", v.stats.responses(1)}, {"2xx", v.stats.responses(2)}, {"3xx", v.stats.responses(3)},
                     {"4xx", v.stats.responses(4)}, {"5xx", v.stats.responses(5)}}},
      {"latency", latency_buckets(v)},
      {"routes", std::move(routes)}};
  for (auto& [key, value] : pool.items()) out[key] = value;
  return out;
}

namespace {

void process_metrics(PrometheusText& m) {
  const ProcessFigures proc = read_process_figures();
  // The names every Prometheus client library uses.
  m.single("process_resident_memory_bytes", "gauge", "Resident memory of the server process in bytes.", proc.rss_bytes);
  m.single("process_virtual_memory_bytes", "gauge", "Virtual memory of the server process in bytes.", proc.virtual_bytes);
  m.single("process_cpu_seconds_total", "counter", "User and system CPU time of the server process in seconds.",
           proc.cpu_seconds);
  m.single("process_start_time_seconds", "gauge", "Start time of the server process since the Unix epoch in seconds.",
           proc.start_time_s);
  m.single("process_open_fds", "gauge", "Open file descriptors of the server process.", proc.open_fds);
  if (proc.max_fds > 0) {
    m.single("process_max_fds", "gauge", "Limit on open file descriptors of the server process.", proc.max_fds);
  }
}

// Connections and responses, counted by the I/O threads.
void connection_metrics(PrometheusText& m, const ServerStats& s) {
  m.single("gilgamesh_connections_open", "gauge", "Open client connections, event streams included.",
           s.connections_open.load());
  m.single("gilgamesh_connections_accepted_total", "counter", "Client connections accepted.",
           s.connections_accepted.load());
  m.single("gilgamesh_event_streams_open", "gauge", "Open GET /events streams (dashboards watching).",
           s.event_streams_open.load());
  m.single("gilgamesh_websockets_open", "gauge", "Open WebSockets (counted in gilgamesh_connections_open too).",
           s.websockets_open.load());
  m.family("gilgamesh_responses_total", "counter", "Responses sent, by status class.");
  for (int c = 1; c <= 5; ++c) m.sample({{"class", std::to_string(c) + "xx"}}, s.responses(c));
  m.single("gilgamesh_rejected_queue_full_total", "counter",
           "Requests answered 503 because --max-queue requests were already waiting.", s.rejected_queue_full.load());
  m.single("gilgamesh_deadline_exceeded_total", "counter",
           "Requests answered 504 because no response was ready within --timeout.", s.deadline_exceeded.load());
  m.single("gilgamesh_connections_rejected_total", "counter",
           "Connections closed at once because --max-connections were already open.", s.connections_rejected.load());
  m.single("gilgamesh_accept_errors_total", "counter",
           "Failed accepts (out of file descriptors and the like); the acceptor backs off and retries.",
           s.accept_errors.load());
}

void pool_metrics(PrometheusText& m, const ExecutorInfo& info, const PoolStats& p) {
  m.single("gilgamesh_workers", "gauge", "Python workers configured (--workers).", std::int64_t{info.workers});
  m.single("gilgamesh_ready_workers", "gauge", "Workers started and able to take a job.", std::int64_t{p.ready_workers});
  m.single("gilgamesh_busy_workers", "gauge", "Workers running at least one handler now.", std::int64_t{p.busy_workers});
  m.single("gilgamesh_worker_threads", "gauge", "Threads per worker: requests a worker serves at once (--threads).",
           std::int64_t{p.threads_per_worker});
  m.single("gilgamesh_busy_threads", "gauge", "Worker threads running a handler now, every worker together.",
           std::int64_t{p.busy_threads});
  m.single("gilgamesh_queue_depth", "gauge", "Requests waiting for a worker.", std::uint64_t{p.queue_depth});
  m.single("gilgamesh_queue_capacity", "gauge", "Requests that may wait before new ones get 503 (--max-queue).",
           std::uint64_t{p.max_queue});
  m.single("gilgamesh_worker_recycles_total", "counter", "Workers recycled after --max-requests.", p.recycles_total);
  m.single("gilgamesh_worker_replacements_total", "counter",
           "Workers replaced because they died, hung or were abandoned.", p.replacements_total);
  m.single("gilgamesh_worker_interrupted_total", "counter",
           "Handlers interrupted at their deadline by an exception raised in their thread.", p.interrupted_total);
  m.single("gilgamesh_worker_abandoned_total", "counter",
           "Workers abandoned because their handler did not return after the interruption.", p.abandoned_total);
  m.single("gilgamesh_abandoned_workers", "gauge", "Abandoned worker threads still running.",
           std::int64_t{p.abandoned_live});
  m.single("gilgamesh_draining_workers", "gauge",
           "Recycled workers still draining their requests and WebSockets beside their replacement.",
           std::int64_t{p.draining_workers});
  m.single("gilgamesh_abandoned_workers_limit", "gauge",
           "Abandoned workers at which the pool stops replacing and reports not ready.", std::int64_t{p.max_abandoned});
  m.single("gilgamesh_worker_killed_total", "counter", "Worker processes killed at their deadline.", p.killed_total);
  m.single("gilgamesh_dropped_disconnected_total", "counter",
           "Queued requests dropped before they ran because their client had gone.", p.dropped_disconnected_total);
  m.single("gilgamesh_expired_in_queue_total", "counter",
           "Queued requests that reached their deadline before a worker took them (answered 504).",
           p.expired_in_queue_total);
  if (p.zygote_restarts_total) {
    m.single("gilgamesh_zygote_restarts_total", "counter",
             "processes: zygotes started again because the previous one died.", *p.zygote_restarts_total);
  }
  m.single("gilgamesh_interpreters_created_total", "counter", "Python interpreters created.", p.interpreters_created);
  m.single("gilgamesh_interpreters_ended_total", "counter", "Python interpreters ended.", p.interpreters_ended);
  m.single("gilgamesh_interpreters_left", "gauge",
           "Sub-interpreters left to threads the app started, never ended (their memory stays in use).",
           p.interpreters_left);
}

// One series per worker.
void worker_metrics(PrometheusText& m, const std::vector<WorkerStats>& workers) {
  if (workers.empty()) return;
  auto id = [](const WorkerStats& w) { return std::to_string(w.worker); };
  m.family("gilgamesh_worker_state", "gauge", "1 for the state each worker is in, else 0.");
  for (const WorkerStats& w : workers) {
    for (WorkerState state : kWorkerStates) {
      m.sample({{"worker", id(w)}, {"state", worker_state_name(state)}}, std::int64_t{state == w.state ? 1 : 0});
    }
  }
  m.family("gilgamesh_worker_requests_total", "counter", "Requests each worker has handled.");
  for (const WorkerStats& w : workers) m.sample({{"worker", id(w)}}, w.requests);
  using Figure = std::optional<std::uint64_t> WorkerStats::*;
  for (auto [figure, name, help] : {std::tuple{Figure{&WorkerStats::rss_bytes}, "gilgamesh_worker_resident_memory_bytes",
                                               "Resident memory of each worker process in bytes."},
                                    std::tuple{Figure{&WorkerStats::pss_bytes}, "gilgamesh_worker_proportional_memory_bytes",
                                               "Proportional set size (shared pages split) of each worker process."}}) {
    bool any = false;
    for (const WorkerStats& w : workers) any = any || (w.*figure).has_value();
    if (!any) continue;
    m.family(name, "gauge", help);
    for (const WorkerStats& w : workers) {
      if (w.*figure) m.sample({{"worker", id(w)}}, *(w.*figure));
    }
  }
}

// Per Python route: counts, then latency as a histogram.
void route_metrics(PrometheusText& m, const ServerView& v) {
  const auto& infos = v.routes();
  const auto& s = v.stats;
  // A WSGI app's one route ("*") has no methods: no label rather than an empty one.
  auto route_labels = [&infos](std::size_t i) {
    Labels labels{{"route", infos[i].path}};
    if (std::string methods = methods_text(infos[i]); !methods.empty()) labels.emplace_back("methods", methods);
    return labels;
  };
  m.family("gilgamesh_route_requests_total", "counter", "Requests answered per Python route, every status.");
  for (std::size_t i = 0; i < infos.size(); ++i) m.sample(route_labels(i), s.route(i).count.load());
  m.family("gilgamesh_route_client_errors_total", "counter", "Requests answered 4xx per Python route.");
  for (std::size_t i = 0; i < infos.size(); ++i) m.sample(route_labels(i), s.route(i).client_errors.load());
  m.family("gilgamesh_route_errors_total", "counter", "Requests answered 5xx per Python route (503 and 504 included).");
  for (std::size_t i = 0; i < infos.size(); ++i) m.sample(route_labels(i), s.route(i).errors.load());
  m.family("gilgamesh_route_latency_seconds", "histogram",
           "Time from a request's last header byte to its response per Python route, in seconds.");
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const LatencyHistogram& h = s.route(i).latency;
    const auto cumulative = h.prometheus_cumulative();
    Labels labels = route_labels(i);
    labels.emplace_back("le", "");
    for (std::size_t b = 0; b < cumulative.size(); ++b) {
      labels.back().second = b < LatencyHistogram::kPrometheusBounds.size()
                                 ? bound_text(LatencyHistogram::kPrometheusBounds[b])
                                 : "+Inf";
      m.sample(labels, cumulative[b], "_bucket");
    }
    labels.pop_back();
    m.sample(labels, h.sum_seconds(), "_sum");
    m.sample(labels, cumulative.back(), "_count");
  }
}

}  // namespace

std::string metrics_text(const ServerView& v) {
  PrometheusText m;
  const ExecutorInfo info = v.executor.info();
  const PoolStats pool = v.executor.stats();
  m.family("gilgamesh_build_info", "gauge", "Always 1; the labels say which server, strategy and Python build answer.");
  m.sample({{"version", GILGAMESH_VERSION},
            {"strategy", std::string(strategy_name(info.strategy))},
            {"python_version", info.python_version},
            {"build", std::string(python_build_name(info.build))},
            {"gil_enabled", info.gil_enabled ? "true" : "false"}},
           std::int64_t{1});
  process_metrics(m);
  connection_metrics(m, v.stats);
  pool_metrics(m, info, pool);
  worker_metrics(m, pool.workers);
  route_metrics(m, v);
  return m.take();
}

}  // namespace gilgamesh

// Request counters and latency histograms, updated lock-free by the I/O
// threads and read by /stats, /metrics and /events.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace gilgamesh {

// Every latency is counted twice, in two bucket sets:
// - fine, log-spaced buckets from 10 us (x1.2 each) up to about 3 hours, for
//   the quantiles in /stats and on the dashboard (at most 20 % wide);
// - the Prometheus buckets of /metrics (kPrometheusBounds), fixed so that a
//   scrape today can be compared with one next month.
class LatencyHistogram {
 public:
  static constexpr int kBuckets = 128;
  // Upper bounds (le) in seconds, +Inf implied: /hello (~50 us) and
  // fib(25) (~10 ms) each fall between two of them, as does a 1 s outlier.
  static constexpr std::array<double, 20> kPrometheusBounds = {
      0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,     0.1,     0.25,   0.5,     1.0,    2.5,   5.0,    10.0,  30.0, 60.0};

  void record(std::chrono::nanoseconds latency);
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum_seconds() const;
  // Quantile q (0..1) in milliseconds, interpolated linearly inside the fine
  // bucket that holds it (as Prometheus' histogram_quantile does); 0 if empty.
  double quantile_ms(double q) const;
  double mean_ms() const;
  // Count in fine bucket i.
  std::uint64_t bucket_count(int bucket) const;
  // Cumulative counts for each of kPrometheusBounds (le), then +Inf.
  std::array<std::uint64_t, kPrometheusBounds.size() + 1> prometheus_cumulative() const;

  static double bucket_upper_ms(int bucket);
  static int bucket_of(std::chrono::nanoseconds latency);
  // Quantile q of fine-bucket counts (bucket i holds counts[i]), interpolated; 0 if empty.
  static double quantile_ms(const std::array<std::uint64_t, kBuckets>& counts, double q);

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::array<std::atomic<std::uint64_t>, kPrometheusBounds.size() + 1> prometheus_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
};

struct RouteCounters {
  std::atomic<std::uint64_t> count{0};
  std::atomic<std::uint64_t> client_errors{0};  // 4xx
  std::atomic<std::uint64_t> errors{0};         // 5xx
  LatencyHistogram latency;
};

class ServerStats {
 public:
  ServerStats() = default;
  // Once, before any request is routed to a Python route.
  void init_routes(std::size_t python_routes);
  void record_route(std::size_t route, int status, std::chrono::nanoseconds latency);
  void record_status(int status);
  std::atomic<std::uint64_t> connections_accepted{0};
  // Open client connections, event streams (GET /events) included.
  std::atomic<std::int64_t> connections_open{0};
  std::atomic<std::uint64_t> connections_rejected{0};  // closed at once: --max-connections reached
  std::atomic<std::uint64_t> accept_errors{0};         // accept failed (out of descriptors, ...)
  std::atomic<std::int64_t> event_streams_open{0};
  std::atomic<std::int64_t> websockets_open{0};  // accepted WebSockets (in connections_open too)
  std::atomic<std::uint64_t> rejected_queue_full{0};
  std::atomic<std::uint64_t> deadline_exceeded{0};
  const RouteCounters& route(std::size_t i) const { return *routes_[i]; }
  std::size_t route_count() const { return routes_.size(); }
  // responses by status class: 1xx..5xx
  std::uint64_t responses(int status_class) const { return by_class_[status_class].load(); }

 private:
  std::vector<std::unique_ptr<RouteCounters>> routes_;
  std::array<std::atomic<std::uint64_t>, 6> by_class_{};
};

// This process's own figures from /proc/self (Linux); zero where unreadable.
struct ProcessFigures {
  std::uint64_t rss_bytes = 0;
  std::uint64_t virtual_bytes = 0;
  double cpu_seconds = 0;       // user + system
  double start_time_s = 0;      // Unix time
  std::uint64_t open_fds = 0;
  std::uint64_t max_fds = 0;
};
ProcessFigures read_process_figures();

}  // namespace gilgamesh

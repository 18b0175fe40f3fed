// Request counters and latency histograms, updated lock-free by the I/O
// threads and read by /stats and /metrics.
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

// Log-spaced buckets from 10 us (x1.2 each) up to about 3 hours.
class LatencyHistogram {
 public:
  static constexpr int kBuckets = 128;
  void record(std::chrono::nanoseconds latency);
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  // Upper bound of the bucket holding quantile q (0..1), in milliseconds.
  double quantile_ms(double q) const;
  double mean_ms() const;
  static double bucket_upper_ms(int bucket);
  static int bucket_of(std::chrono::nanoseconds latency);

 private:
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_us_{0};
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
  std::atomic<std::int64_t> connections_open{0};
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

}  // namespace gilgamesh

#include "stats.hpp"

#include <cmath>

namespace gilgamesh {

namespace {
constexpr double kFirstUpperUs = 10.0;
constexpr double kGrowth = 1.2;
}  // namespace

int LatencyHistogram::bucket_of(std::chrono::nanoseconds latency) {
  double us = static_cast<double>(latency.count()) / 1000.0;
  if (us <= kFirstUpperUs) return 0;
  int b = static_cast<int>(std::ceil(std::log(us / kFirstUpperUs) / std::log(kGrowth)));
  return std::min(b, kBuckets - 1);
}

double LatencyHistogram::bucket_upper_ms(int bucket) {
  return kFirstUpperUs * std::pow(kGrowth, bucket) / 1000.0;
}

void LatencyHistogram::record(std::chrono::nanoseconds latency) {
  buckets_[static_cast<std::size_t>(bucket_of(latency))].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_us_.fetch_add(static_cast<std::uint64_t>(latency.count() / 1000), std::memory_order_relaxed);
}

double LatencyHistogram::quantile_ms(double q) const {
  std::uint64_t total = 0;
  for (const auto& b : buckets_) total += b.load(std::memory_order_relaxed);
  if (total == 0) return 0.0;
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
  if (rank == 0) rank = 1;
  std::uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += buckets_[static_cast<std::size_t>(i)].load(std::memory_order_relaxed);
    if (seen >= rank) return bucket_upper_ms(i);
  }
  return bucket_upper_ms(kBuckets - 1);
}

double LatencyHistogram::mean_ms() const {
  auto n = count();
  return n == 0 ? 0.0 : static_cast<double>(sum_us_.load()) / 1000.0 / static_cast<double>(n);
}

void ServerStats::init_routes(std::size_t python_routes) {
  for (std::size_t i = 0; i < python_routes; ++i) routes_.push_back(std::make_unique<RouteCounters>());
}

void ServerStats::record_status(int status) {
  int cls = status / 100;
  if (cls >= 1 && cls <= 5) by_class_[static_cast<std::size_t>(cls)].fetch_add(1, std::memory_order_relaxed);
}

void ServerStats::record_route(std::size_t route, int status, std::chrono::nanoseconds latency) {
  if (route >= routes_.size()) return;
  RouteCounters& r = *routes_[route];
  r.count.fetch_add(1, std::memory_order_relaxed);
  if (status >= 500) {
    r.errors.fetch_add(1, std::memory_order_relaxed);
  } else if (status >= 400) {
    r.client_errors.fetch_add(1, std::memory_order_relaxed);
  }
  r.latency.record(latency);
}

}  // namespace gilgamesh

#include "server/observation/stats.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

namespace gilgamesh {

namespace {
constexpr double kFirstUpperUs = 10.0;
constexpr double kGrowth = 1.2;

// kPrometheusBounds in whole nanoseconds, to place a latency without floating point.
constexpr auto kPrometheusBoundsNs = [] {
  std::array<std::int64_t, LatencyHistogram::kPrometheusBounds.size()> ns{};
  for (std::size_t i = 0; i < ns.size(); ++i) {
    ns[i] = static_cast<std::int64_t>(LatencyHistogram::kPrometheusBounds[i] * 1e9 + 0.5);
  }
  return ns;
}();
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
  const std::int64_t ns = std::max<std::int64_t>(latency.count(), 0);
  buckets_[static_cast<std::size_t>(bucket_of(latency))].fetch_add(1, std::memory_order_relaxed);
  auto le = std::lower_bound(kPrometheusBoundsNs.begin(), kPrometheusBoundsNs.end(), ns);
  prometheus_[static_cast<std::size_t>(le - kPrometheusBoundsNs.begin())].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t LatencyHistogram::bucket_count(int bucket) const {
  return buckets_[static_cast<std::size_t>(bucket)].load(std::memory_order_relaxed);
}

double LatencyHistogram::quantile_ms(const std::array<std::uint64_t, kBuckets>& counts, double q) {
  std::uint64_t total = 0;
  for (auto c : counts) total += c;
  if (total == 0) return 0.0;
  const double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(total);
  std::uint64_t below = 0;
  for (int i = 0; i < kBuckets; ++i) {
    const std::uint64_t in = counts[static_cast<std::size_t>(i)];
    if (in > 0 && static_cast<double>(below + in) >= rank) {
      const double lower = i == 0 ? 0.0 : bucket_upper_ms(i - 1);
      const double upper = bucket_upper_ms(i);
      const double fraction = std::clamp((rank - static_cast<double>(below)) / static_cast<double>(in), 0.0, 1.0);
      return lower + (upper - lower) * fraction;
    }
    below += in;
  }
  return bucket_upper_ms(kBuckets - 1);
}

double LatencyHistogram::quantile_ms(double q) const {
  std::array<std::uint64_t, kBuckets> counts{};
  for (int i = 0; i < kBuckets; ++i) counts[static_cast<std::size_t>(i)] = bucket_count(i);
  return quantile_ms(counts, q);
}

double LatencyHistogram::sum_seconds() const {
  return static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
}

double LatencyHistogram::mean_ms() const {
  auto n = count();
  return n == 0 ? 0.0 : sum_seconds() * 1000.0 / static_cast<double>(n);
}

std::array<std::uint64_t, LatencyHistogram::kPrometheusBounds.size() + 1>
LatencyHistogram::prometheus_cumulative() const {
  std::array<std::uint64_t, kPrometheusBounds.size() + 1> out{};
  std::uint64_t running = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    running += prometheus_[i].load(std::memory_order_relaxed);
    out[i] = running;
  }
  return out;
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

ProcessFigures read_process_figures() {
  ProcessFigures out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  {
    std::ifstream statm("/proc/self/statm");
    std::uint64_t size = 0, resident = 0;
    if (statm >> size >> resident) out.rss_bytes = resident * page;
  }
  {
    // Fields after the parenthesised command name (which may hold spaces):
    // state(3) ... utime(14) stime(15) ... starttime(22) vsize(23).
    std::ifstream stat("/proc/self/stat");
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    if (close != std::string::npos) {
      std::istringstream fields(line.substr(close + 2));
      std::vector<std::string> f;
      for (std::string s; fields >> s;) f.push_back(s);
      auto field = [&f](std::size_t n) { return n - 3 < f.size() ? std::stod(f[n - 3]) : 0.0; };
      if (f.size() >= 21 && ticks > 0) {
        out.cpu_seconds = (field(14) + field(15)) / ticks;
        out.virtual_bytes = static_cast<std::uint64_t>(field(23));
        std::ifstream boot("/proc/stat");
        for (std::string key; boot >> key;) {
          if (key == "btime") {
            double btime = 0;
            boot >> btime;
            out.start_time_s = btime + field(22) / ticks;
            break;
          }
        }
      }
    }
  }
  if (DIR* d = opendir("/proc/self/fd")) {
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') ++out.open_fds;
    }
    closedir(d);
    if (out.open_fds > 0) --out.open_fds;  // the one opendir itself holds
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) out.max_fds = limit.rlim_cur;
  return out;
}

}  // namespace gilgamesh

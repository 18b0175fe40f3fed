#include "server/http/cpu_limit.hpp"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace gilgamesh {

namespace {

namespace fs = std::filesystem;

std::optional<std::string> read_first_line(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

// cpu.max: "max 100000" (no quota) or "QUOTA PERIOD" in microseconds.
std::optional<double> v2_quota(const fs::path& dir) {
  auto line = read_first_line(dir / "cpu.max");
  if (!line) return std::nullopt;
  std::istringstream in(*line);
  std::string quota;
  double period = 0;
  if (!(in >> quota >> period) || quota == "max" || period <= 0) return std::nullopt;
  try {
    const double q = std::stod(quota);
    if (q > 0) return q / period;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// cpu.cfs_quota_us: -1 (no quota) or microseconds per cpu.cfs_period_us.
std::optional<double> v1_quota(const fs::path& dir) {
  auto quota = read_first_line(dir / "cpu.cfs_quota_us");
  auto period = read_first_line(dir / "cpu.cfs_period_us");
  if (!quota || !period) return std::nullopt;
  try {
    const double q = std::stod(*quota);
    const double p = std::stod(*period);
    if (q > 0 && p > 0) return q / p;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// The smallest quota from `top / relative` up to `top`, skipping directories
// that do not exist in this mount namespace.
template <typename ReadQuota>
std::optional<double> tightest(const fs::path& top, std::string_view relative, ReadQuota read) {
  std::optional<double> best;
  fs::path rel = fs::path(std::string(relative)).relative_path();
  for (;;) {
    const fs::path dir = rel.empty() ? top : top / rel;
    std::error_code ec;
    if (fs::is_directory(dir, ec)) {
      if (auto q = read(dir)) best = best ? std::min(*best, *q) : *q;
    }
    if (rel.empty()) break;
    rel = rel.parent_path();
  }
  return best;
}

}  // namespace

std::optional<double> cgroup_cpu_quota(const fs::path& cgroup_root, std::string_view proc_self_cgroup) {
  std::optional<double> best;
  auto take = [&](std::optional<double> q) {
    if (q) best = best ? std::min(*best, *q) : *q;
  };
  std::istringstream lines{std::string(proc_self_cgroup)};
  std::string line;
  while (std::getline(lines, line)) {
    // "ID:CONTROLLERS:PATH"; the path may itself contain ':'.
    const auto first = line.find(':');
    const auto second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string_view path = std::string_view(line).substr(second + 1);
    if (line.compare(0, first, "0") == 0 && controllers.empty()) {
      take(tightest(cgroup_root, path, v2_quota));  // cgroup v2, unified
      continue;
    }
    std::istringstream names(controllers);
    std::string name;
    while (std::getline(names, name, ',')) {
      if (name != "cpu") continue;
      // v1 mounts the cpu controller as "cpu,cpuacct" (a "cpu" link to it is common).
      for (const char* mount : {"cpu,cpuacct", "cpu", "cpuacct,cpu"}) {
        std::error_code ec;
        if (fs::is_directory(cgroup_root / mount, ec)) {
          take(tightest(cgroup_root / mount, path, v1_quota));
          break;
        }
      }
    }
  }
  return best;
}

int usable_cpus() {
  int cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(std::thread::hardware_concurrency());
  std::ifstream in("/proc/self/cgroup");
  std::stringstream text;
  text << in.rdbuf();
  if (auto quota = cgroup_cpu_quota("/sys/fs/cgroup", text.str())) {
    cpus = std::min(cpus, static_cast<int>(std::ceil(*quota - 1e-9)));
  }
  return std::max(1, cpus);
}

}  // namespace gilgamesh

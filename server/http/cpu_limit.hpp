// How many CPUs this process may use, for the --workers and --io-threads
// defaults: in a container that is the CPU quota (`docker run --cpus`, a
// Kubernetes CPU limit), not the host's CPU count.
#pragma once

#include <filesystem>
#include <optional>
#include <string_view>

namespace gilgamesh {

// The CPUs in this process's affinity mask, capped by its cgroup CPU quota
// rounded up (1.5 CPUs: 2). At least 1.
int usable_cpus();

// The tightest CPU quota, in CPUs, on the way from this process's cgroup up to
// the hierarchy's root: cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` /
// `cpu.cfs_period_us`. `proc_self_cgroup` is the text of /proc/self/cgroup;
// `cgroup_root` is where the hierarchy is mounted (/sys/fs/cgroup). A container
// sees its own cgroup at the mount's root while /proc/self/cgroup may name the
// host's path: missing directories on the way up are skipped. nullopt: no quota.
std::optional<double> cgroup_cpu_quota(const std::filesystem::path& cgroup_root,
                                       std::string_view proc_self_cgroup);

}  // namespace gilgamesh

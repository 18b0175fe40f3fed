// The --workers default in a container: the cgroup CPU quota, found from
// /proc/self/cgroup, on cgroup v2 and v1 hierarchies laid out in a temp dir.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "server/http/cpu_limit.hpp"

namespace fs = std::filesystem;
using gilgamesh::cgroup_cpu_quota;

namespace {

class CgroupTree : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("gilgamesh-cgroup-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  void write(const fs::path& relative, const std::string& text) {
    fs::create_directories((root_ / relative).parent_path());
    std::ofstream(root_ / relative) << text;
  }
  fs::path root_;
};

TEST_F(CgroupTree, V2QuotaAtTheContainersRoot) {
  write("cpu.max", "150000 100000\n");
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(root_, "0::/\n"), 1.5);
}

TEST_F(CgroupTree, V2NoQuota) {
  write("cpu.max", "max 100000\n");
  EXPECT_FALSE(cgroup_cpu_quota(root_, "0::/\n"));
}

TEST_F(CgroupTree, V2TightestAncestorWins) {
  write("kubepods/cpu.max", "100000 100000\n");
  write("kubepods/pod1/cpu.max", "400000 100000\n");
  write("kubepods/pod1/ctr/cpu.max", "max 100000\n");
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(root_, "0::/kubepods/pod1/ctr\n"), 1.0);
}

TEST_F(CgroupTree, V2HostPathMissingInsideTheContainer) {
  // cgroup namespace off: /proc/self/cgroup names the host's path, the mount is our own cgroup.
  write("cpu.max", "200000 100000\n");
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(root_, "0::/system.slice/docker-abc.scope\n"), 2.0);
}

TEST_F(CgroupTree, V1CpuController) {
  write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n");
  write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  write("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  write("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_DOUBLE_EQ(*cgroup_cpu_quota(root_, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"), 0.5);
}

TEST_F(CgroupTree, V1Unlimited) {
  write("cpu/cpu.cfs_quota_us", "-1\n");
  write("cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_FALSE(cgroup_cpu_quota(root_, "1:cpu:/\n0::/\n"));
}

TEST_F(CgroupTree, NothingMountedOrUnreadable) {
  EXPECT_FALSE(cgroup_cpu_quota(root_, "0::/\n"));
  EXPECT_FALSE(cgroup_cpu_quota(root_, "garbage\n"));
  write("cpu.max", "nonsense\n");
  EXPECT_FALSE(cgroup_cpu_quota(root_, "0::/\n"));
}

}  // namespace

// server/model/app_forks: what a process the app forks keeps of the server.
#include "server/model/app_forks.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

extern char** environ;

namespace {

using namespace gilgamesh;

void on_signal(int) {}

// Runs `child` in a forked process: its exit status (-1: it did not exit).
template <typename F>
int in_fork(F child) {
  const pid_t pid = fork();
  if (pid == 0) _exit(child());
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

TEST(AppForks, AForkedCopyClosesTheListenerAndTakesSigtermItself) {
  app_forks::watch();
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  app_forks::set_listener(listener);
  struct sigaction handled {}, before {};
  handled.sa_handler = on_signal;
  sigemptyset(&handled.sa_mask);
  ASSERT_EQ(sigaction(SIGTERM, &handled, &before), 0);
  const int status = in_fork([&] {
    if (!app_forks::forked()) return 1;
    if (fcntl(listener, F_GETFD) != -1 || errno != EBADF) return 2;
    struct sigaction now {};
    if (sigaction(SIGTERM, nullptr, &now) != 0 || now.sa_handler != SIG_DFL) return 3;
    return 0;
  });
  EXPECT_EQ(status, 0) << "1: not marked, 2: the listener still open, 3: SIGTERM still handled";
  // The parent is as it was.
  EXPECT_FALSE(app_forks::forked());
  EXPECT_NE(fcntl(listener, F_GETFD), -1);
  struct sigaction now {};
  ASSERT_EQ(sigaction(SIGTERM, &before, &now), 0);
  EXPECT_EQ(now.sa_handler, on_signal);
  app_forks::set_listener(-1);
  close(listener);
}

TEST(AppForks, ACopyLeavesWhereItsAnswerWouldGo) {
  app_forks::watch();
  EXPECT_EQ(in_fork([] {
              app_forks::leave_if_forked();
              return 3;  // not reached
            }),
            0);
  app_forks::leave_if_forked();  // here: returns
  SUCCEED();
}

TEST(AppForks, ASpawnedProcessLeavesTheServerUnmarked) {
  // posix_spawn (the zygote, the probe) and vfork (subprocess) run no fork handlers: were
  // they run, the shared memory would mark the server itself.
  app_forks::watch();
  pid_t pid = 0;
  char arg0[] = "true";
  char* argv[] = {arg0, nullptr};
  ASSERT_EQ(posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_FALSE(app_forks::forked());
  const pid_t v = vfork();
  if (v == 0) _exit(0);
  ASSERT_EQ(waitpid(v, &status, 0), v);
  EXPECT_FALSE(app_forks::forked());
}

}  // namespace

#include "server/model/app_forks.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <mutex>

namespace gilgamesh::app_forks {

namespace {

std::atomic<int> g_listener{-1};
std::atomic<bool> g_forked{false};

// pthread_atfork's child handler: async-signal-safe calls only.
void in_forked_child() {
  g_forked.store(true, std::memory_order_relaxed);
  const int fd = g_listener.exchange(-1, std::memory_order_relaxed);
  if (fd >= 0) ::close(fd);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGTERM, &dfl, nullptr);
  sigaction(SIGINT, &dfl, nullptr);
}

}  // namespace

void watch() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, in_forked_child); });
}

void set_listener(int fd) { g_listener.store(fd, std::memory_order_relaxed); }

bool forked() { return g_forked.load(std::memory_order_relaxed); }

void leave_if_forked() {
  if (!g_forked.load(std::memory_order_relaxed)) return;
  static constexpr char kWhy[] =
      "gilgamesh: a process the app forked returned into the server's code with an answer instead of exiting; "
      "it exits now (end a forked child with os._exit())\n";
  (void)!::write(STDERR_FILENO, kWhy, sizeof kWhy - 1);
  ::_exit(0);
}

}  // namespace gilgamesh::app_forks

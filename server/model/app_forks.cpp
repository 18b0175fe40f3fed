#include "server/model/app_forks.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstddef>
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
  sigaction(SIGHUP, &dfl, nullptr);
}

}  // namespace

void watch() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, in_forked_child); });
}

void set_listener(int fd) { g_listener.store(fd, std::memory_order_relaxed); }

bool forked() { return g_forked.load(std::memory_order_relaxed); }

namespace {

template <std::size_t N>
[[noreturn]] void leave(const char (&why)[N]) {
  (void)!::write(STDERR_FILENO, why, N - 1);
  ::_exit(0);
}

}  // namespace

void leave_if_forked() {
  if (!g_forked.load(std::memory_order_relaxed)) return;
  leave("gilgamesh: a process the app forked returned into the server's code with an answer instead of exiting; "
        "it exits now (end a forked child with os._exit())\n");
}

void leave_if_copy_of(pid_t importer) {
  if (::getpid() == importer) return;
  leave("gilgamesh: a process the app forked while it was imported returned from the import instead of exiting; "
        "it exits now (end a forked child with os._exit())\n");
}

}  // namespace gilgamesh::app_forks

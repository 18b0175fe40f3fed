// The server's Reactor (server/http/asio_reactor.hpp), on a real io_context and a
// socket pair: it calls back whenever the descriptor can be read, also for bytes a
// callback left unread; a callback that says it is done, or a cancelled watch, is
// not called again; cancel() waits for a callback that is running, except its own.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "server/http/asio_reactor.hpp"

using namespace gilgamesh;
using namespace std::chrono_literals;

namespace {

// An io_context run by `threads` threads for the test's length.
class IoThreads {
 public:
  explicit IoThreads(int threads) : guard_(boost::asio::make_work_guard(ioc)) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { ioc.run(); });
  }
  ~IoThreads() {
    guard_.reset();
    ioc.stop();
    for (auto& t : threads_) t.join();
  }
  boost::asio::io_context ioc;

 private:
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::vector<std::thread> threads_;
};

struct SocketPair {
  int a = -1, b = -1;
  SocketPair() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a = sv[0];
    b = sv[1];
  }
  ~SocketPair() {
    if (a >= 0) close(a);
    if (b >= 0) close(b);
  }
};

// Reads at most `most` bytes of what `fd` holds now, without waiting.
std::string take(int fd, std::size_t most) {
  std::string out(most, '\0');
  const ssize_t n = ::recv(fd, out.data(), most, MSG_DONTWAIT);
  out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return out;
}

bool eventually(const std::function<bool()>& condition) {
  for (auto until = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < until;) {
    if (condition()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return condition();
}

}  // namespace

// Ten bytes per call, so that most calls leave bytes behind: no new edge comes for
// them (Asio registers descriptors edge-triggered), and the next call must come
// anyway. On two I/O threads, in bursts, so that another thread's epoll_wait can
// take an edge between a call's read and its next wait.
TEST(AsioReactor, CallsBackUntilEveryByteIsReadEvenWhenACallLeavesSomeBehind) {
  IoThreads io(2);
  AsioReactor reactor(io.ioc);
  SocketPair s;
  std::string got;
  std::mutex got_mutex;
  auto watch = reactor.watch(s.a, [&] {
    std::lock_guard lock(got_mutex);
    got += take(s.a, 10);
    return true;
  });
  std::string sent;
  for (int burst = 0; burst < 200; ++burst) {
    const std::string piece(1 + burst % 37, static_cast<char>('a' + burst % 26));
    ASSERT_EQ(::send(s.b, piece.data(), piece.size(), 0), static_cast<ssize_t>(piece.size()));
    sent += piece;
    if (burst % 10 == 0) std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(eventually([&] {
    std::lock_guard lock(got_mutex);
    return got.size() == sent.size();
  })) << "the watch stopped calling back with bytes unread";
  std::lock_guard lock(got_mutex);
  EXPECT_EQ(got, sent);
}

TEST(AsioReactor, ACallbackThatSaysItIsDoneIsNotCalledAgain) {
  IoThreads io(1);
  AsioReactor reactor(io.ioc);
  SocketPair s;
  std::atomic<int> calls{0};
  auto watch = reactor.watch(s.a, [&] {
    ++calls;
    return false;  // leaves the byte: the descriptor stays readable
  });
  ASSERT_EQ(::send(s.b, "x", 1, 0), 1);
  ASSERT_TRUE(eventually([&] { return calls == 1; }));
  ASSERT_EQ(::send(s.b, "y", 1, 0), 1);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(calls, 1);
  watch->cancel();  // after the end: nothing to wait for
  EXPECT_EQ(take(s.a, 10), "xy") << "the caller's descriptor is still open and its bytes unread";
}

TEST(AsioReactor, CancelWaitsForTheCallbackThatRunsAndNoneComesAfter) {
  IoThreads io(2);
  AsioReactor reactor(io.ioc);
  SocketPair s;
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> calls{0};
  std::atomic<bool> returned{false};
  auto watch = reactor.watch(s.a, [&] {
    take(s.a, 100);
    if (++calls == 1) {
      entered.set_value();
      released.wait();
    }
    returned = true;
    return true;
  });
  ASSERT_EQ(::send(s.b, "x", 1, 0), 1);
  ASSERT_EQ(entered.get_future().wait_for(10s), std::future_status::ready);
  auto cancelled = std::async(std::launch::async, [&] { watch->cancel(); });
  EXPECT_EQ(cancelled.wait_for(100ms), std::future_status::timeout) << "cancel() returned while a callback ran";
  release.set_value();
  ASSERT_EQ(cancelled.wait_for(10s), std::future_status::ready);
  EXPECT_TRUE(returned);
  ASSERT_EQ(::send(s.b, "y", 1, 0), 1);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(calls, 1) << "a cancelled watch called back";
}

TEST(AsioReactor, ACallbackMayCancelItsOwnWatch) {
  IoThreads io(1);
  AsioReactor reactor(io.ioc);
  SocketPair s;
  std::atomic<int> calls{0};
  std::unique_ptr<Reactor::Watch> watch;
  std::mutex watch_mutex;
  {
    std::lock_guard lock(watch_mutex);
    watch = reactor.watch(s.a, [&] {
      ++calls;
      take(s.a, 100);
      std::lock_guard l(watch_mutex);
      watch->cancel();  // returns at once: it is this callback that runs
      return true;
    });
  }
  ASSERT_EQ(::send(s.b, "x", 1, 0), 1);
  ASSERT_TRUE(eventually([&] { return calls == 1; }));
  ASSERT_EQ(::send(s.b, "y", 1, 0), 1);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(calls, 1);
}

// The server stops its I/O threads before a worker that failed to start is ended:
// cancel() then returns at once, and the io_context's end closes only the reactor's
// own descriptor (a dup), never the caller's.
TEST(AsioReactor, CancelReturnsOnceTheIoContextHasStopped) {
  SocketPair s;
  std::unique_ptr<Reactor::Watch> watch;
  {
    IoThreads io(1);
    AsioReactor reactor(io.ioc);
    watch = reactor.watch(s.a, [] { return true; });
    std::this_thread::sleep_for(20ms);
    io.ioc.stop();
    watch->cancel();
    watch.reset();
  }
  EXPECT_EQ(::send(s.b, "x", 1, 0), 1);
  EXPECT_EQ(take(s.a, 10), "x");
}

#include "server/http/asio_reactor.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace gilgamesh {

namespace {

namespace net = boost::asio;

// One watch's state, shared by its handle and its pending wait. The descriptor is a
// dup of the caller's (Asio makes it non-blocking, and with it the caller's: the two
// share their flags): closing it (on an I/O thread, or when the io_context is
// destroyed with the wait still pending) never closes the caller's, which the caller
// may close as soon as cancel() has returned. One wait is pending at a time, so one
// callback runs at a time whatever the number of I/O threads; every use of
// `descriptor` is under `mutex`.
struct WatchState : std::enable_shared_from_this<WatchState> {
  WatchState(net::io_context& ioc, int fd, std::function<bool()> callback)
      : descriptor(ioc, dup_or_throw(fd)), on_readable(std::move(callback)) {}

  static int dup_or_throw(int fd) {
    const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) throw std::system_error(errno, std::generic_category(), "dup of a watched descriptor");
    return copy;
  }

  // With `mutex`. Asio's epoll reactor registers the descriptor edge-triggered, but
  // a wait it starts re-arms it (EPOLL_CTL_MOD), which reports what is readable now:
  // bytes a callback left (its budget) or that came before this wait are not missed.
  void arm() {
    descriptor.async_wait(net::posix::stream_descriptor::wait_read,
                          [self = shared_from_this()](const boost::system::error_code&) { self->fire(); });
  }

  // A failed wait calls back too: the callback's own read then finds the error.
  void fire() {
    {
      std::lock_guard lock(mutex);
      if (over) return close();
      running = std::this_thread::get_id();
    }
    bool again = false;
    try {
      again = on_readable();
    } catch (...) {
      after(false);
      throw;  // the I/O thread logs it and goes on serving
    }
    after(again);
  }

  // The callback has returned: the next wait, unless it is done or was cancelled.
  void after(bool again) {
    std::lock_guard lock(mutex);
    running = {};
    ran.notify_all();
    if (over || !again) {
      over = true;
      return close();
    }
    arm();
  }

  // With `mutex`.
  void close() {
    boost::system::error_code ignored;
    descriptor.close(ignored);
  }

  net::posix::stream_descriptor descriptor;
  const std::function<bool()> on_readable;
  std::mutex mutex;
  std::condition_variable ran;
  std::thread::id running{};  // the thread in on_readable, if any
  bool over = false;          // cancelled, or the callback said it is done
};

class AsioWatch final : public Reactor::Watch {
 public:
  explicit AsioWatch(std::shared_ptr<WatchState> state) : state_(std::move(state)) {}
  ~AsioWatch() override { cancel(); }

  void cancel() override {
    std::unique_lock lock(state_->mutex);
    if (!state_->over) {
      state_->over = true;
      // The pending wait ends (aborted) and drops the state; with the io_context
      // stopped, its destruction does.
      net::post(state_->descriptor.get_executor(), [s = state_] {
        std::lock_guard l(s->mutex);
        s->close();
      });
    }
    if (state_->running == std::this_thread::get_id()) return;
    state_->ran.wait(lock, [this] { return state_->running == std::thread::id{}; });
  }

 private:
  std::shared_ptr<WatchState> state_;
};

}  // namespace

std::unique_ptr<Reactor::Watch> AsioReactor::watch(int fd, std::function<bool()> on_readable) {
  auto state = std::make_shared<WatchState>(ioc_, fd, std::move(on_readable));
  // Armed on an I/O thread, as every later use of the descriptor is.
  net::post(ioc_, [state] {
    std::lock_guard lock(state->mutex);
    if (!state->over) state->arm();
  });
  return std::make_unique<AsioWatch>(std::move(state));
}

}  // namespace gilgamesh

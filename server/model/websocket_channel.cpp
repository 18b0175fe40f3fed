#include "server/model/websocket_channel.hpp"

#include <utility>

namespace gilgamesh {

void WebSocketChannel::attach_loop(std::function<void(Event&&)> to_loop) {
  std::lock_guard lock(mutex_);
  to_loop_ = std::move(to_loop);
}

WebSocketChannel::Offer WebSocketChannel::send(Message&& m, std::function<void()> room) {
  std::unique_lock lock(mutex_);
  if (ended_ || close_) return Offer::closed;
  queued_bytes_ += m.data.size();
  queued_.push_back(std::move(m));
  const bool full = queued_bytes_ >= capacity_;
  if (full) room_ = std::move(room);
  if (auto wake = wake_locked(lock)) wake();
  return full ? Offer::full : Offer::taken;
}

void WebSocketChannel::more() {
  std::unique_lock lock(mutex_);
  if (ended_) return;
  ++reads_;
  if (auto wake = wake_locked(lock)) wake();
}

void WebSocketChannel::close(int code, std::string reason) {
  std::unique_lock lock(mutex_);
  if (ended_ || close_) return;
  close_.emplace(code, std::move(reason));
  if (auto wake = wake_locked(lock)) wake();
}

// The connection's callback, taken out to be called after `lock` is released.
std::function<void()> WebSocketChannel::wake_locked(std::unique_lock<std::mutex>& lock) {
  std::function<void()> wake = std::move(wake_);
  wake_ = nullptr;
  lock.unlock();
  return wake;
}

WebSocketChannel::Work WebSocketChannel::take(bool with_messages, std::function<void()> wake) {
  Work out;
  std::function<void()> room;
  std::unique_lock lock(mutex_);
  if (with_messages && !queued_.empty()) {
    out.messages = std::exchange(queued_, {});
    queued_bytes_ = 0;
    room = std::exchange(room_, nullptr);
  }
  out.reads = std::exchange(reads_, 0);
  if (close_ && !close_taken_) {
    close_taken_ = true;
    out.close = close_;
  }
  if (!ended_) std::swap(wake_, wake);  // the one before (if any) goes below, unlocked
  lock.unlock();
  if (room) room();
  return out;
}

void WebSocketChannel::received(Message&& m) {
  std::function<void(Event&&)> to_loop;
  {
    std::lock_guard lock(mutex_);
    if (ended_) return;
    to_loop = to_loop_;
  }
  Event e;
  e.message = std::move(m);
  if (to_loop) to_loop(std::move(e));
}

void WebSocketChannel::ended(int code, std::string reason) {
  std::function<void(Event&&)> to_loop;
  std::function<void()> room, wake;
  {
    std::lock_guard lock(mutex_);
    if (ended_) return;
    ended_ = true;
    queued_.clear();
    queued_bytes_ = 0;
    wake = std::exchange(wake_, nullptr);  // dropped below, unlocked: it may hold the connection
    room = std::exchange(room_, nullptr);
    to_loop = std::exchange(to_loop_, nullptr);
  }
  if (to_loop) {
    Event e;
    e.ended = true;
    e.code = code;
    e.reason = std::move(reason);
    to_loop(std::move(e));
  }
  if (room) room();
}

bool WebSocketChannel::is_ended() const {
  std::lock_guard lock(mutex_);
  return ended_;
}

}  // namespace gilgamesh

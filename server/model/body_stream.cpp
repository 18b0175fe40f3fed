#include "server/model/body_stream.hpp"

namespace gilgamesh {

BodyStream::Ends BodyStream::make(std::size_t capacity) {
  Ends ends;
  ends.producer = std::make_shared<BodyStream>(capacity);
  ends.consumer = std::shared_ptr<BodyStream>(ends.producer.get(),
                                              [keep = ends.producer](BodyStream* s) { s->cancel(); });
  return ends;
}

bool BodyStream::push(std::string&& chunk) {
  std::unique_lock lock(mutex_);
  space_.wait(lock, [&] { return queued_bytes_ < capacity_ || state_ != State::more; });
  if (state_ != State::more) return false;
  if (chunk.empty()) return true;
  queued_bytes_ += chunk.size();
  queued_.push_back(std::move(chunk));
  if (auto ready = notify_locked(lock)) ready();
  return true;
}

BodyStream::Offer BodyStream::offer(std::string&& chunk, std::function<void()> room) {
  std::unique_lock lock(mutex_);
  if (state_ != State::more) return Offer::cancelled;
  if (!chunk.empty()) {
    queued_bytes_ += chunk.size();
    queued_.push_back(std::move(chunk));
  }
  const bool full = queued_bytes_ >= capacity_;
  if (full) room_ = std::move(room);
  if (auto ready = notify_locked(lock)) ready();
  return full ? Offer::full : Offer::taken;
}

void BodyStream::finish(bool ok) {
  std::unique_lock lock(mutex_);
  if (state_ != State::more) return;
  state_ = ok ? State::finished : State::failed;
  if (auto ready = notify_locked(lock)) ready();
}

// The consumer's callback, taken out to be called after `lock` is released.
std::function<void()> BodyStream::notify_locked(std::unique_lock<std::mutex>& lock) {
  std::function<void()> ready = std::move(ready_);
  ready_ = nullptr;
  lock.unlock();
  return ready;
}

BodyStream::Taken BodyStream::take(std::function<void()> ready) {
  Taken out;
  std::unique_lock lock(mutex_);
  out.state = state_;
  if (queued_.empty()) {
    if (state_ == State::more) ready_ = std::move(ready);
    return out;
  }
  out.chunks.reserve(queued_.size());
  for (std::string& c : queued_) out.chunks.push_back(std::move(c));
  queued_.clear();
  queued_bytes_ = 0;
  space_.notify_all();
  std::function<void()> room = std::move(room_);
  room_ = nullptr;
  lock.unlock();
  if (room) room();
  return out;
}

void BodyStream::cancel() {
  std::unique_lock lock(mutex_);
  if (state_ == State::more || !queued_.empty()) state_ = State::cancelled;  // never a cut body posing as whole
  queued_.clear();
  queued_bytes_ = 0;
  space_.notify_all();
  std::function<void()> room = std::move(room_);
  room_ = nullptr;
  if (auto ready = notify_locked(lock)) ready();  // a consumer waiting learns it is over
  if (room) room();
}

}  // namespace gilgamesh

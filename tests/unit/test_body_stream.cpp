// The bounded buffer between a handler's thread and its connection
// (server/model/body_stream.hpp): order, backpressure, the end, cancellation; and a file's
// bytes fed to one (server/model/file_body.hpp).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "server/model/body_stream.hpp"
#include "server/model/file_body.hpp"

using namespace gilgamesh;
using namespace std::chrono_literals;

TEST(BodyStream, ChunksComeOutInOrderThenTheEnd) {
  BodyStream::Ends ends = BodyStream::make(1024);
  EXPECT_TRUE(ends.producer->push("one"));
  EXPECT_TRUE(ends.producer->push(""));  // dropped: an empty chunk never ends a body
  EXPECT_TRUE(ends.producer->push("two"));
  ends.producer->finish(true);
  BodyStream::Taken t = ends.consumer->take(nullptr);
  ASSERT_EQ(t.chunks.size(), 2u);
  EXPECT_EQ(t.chunks[0], "one");
  EXPECT_EQ(t.chunks[1], "two");
  EXPECT_EQ(t.state, BodyStream::State::finished);
}

TEST(BodyStream, AFullBufferHoldsTheProducerUntilTheConsumerTakes) {
  BodyStream::Ends ends = BodyStream::make(10);
  ASSERT_TRUE(ends.producer->push(std::string(10, 'a')));  // full now
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    EXPECT_TRUE(ends.producer->push("b"));
    pushed = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(pushed) << "push() did not wait for room";
  EXPECT_EQ(ends.consumer->take(nullptr).chunks.size(), 1u);
  producer.join();
  EXPECT_TRUE(pushed);
}

TEST(BodyStream, AWaitingConsumerIsCalledOnceThereIsSomething) {
  BodyStream::Ends ends = BodyStream::make(1024);
  std::promise<void> called;
  BodyStream::Taken t = ends.consumer->take([&] { called.set_value(); });
  EXPECT_TRUE(t.chunks.empty());
  EXPECT_EQ(t.state, BodyStream::State::more);
  std::thread producer([&] { ends.producer->push("x"); });
  EXPECT_EQ(called.get_future().wait_for(5s), std::future_status::ready);
  producer.join();
  EXPECT_EQ(ends.consumer->take(nullptr).chunks.at(0), "x");
}

TEST(BodyStream, ABrokenBodyIsFailedNotFinished) {
  BodyStream::Ends ends = BodyStream::make(1024);
  ends.producer->push("part");
  ends.producer->finish(false);
  BodyStream::Taken t = ends.consumer->take(nullptr);
  EXPECT_EQ(t.chunks.size(), 1u);
  EXPECT_EQ(t.state, BodyStream::State::failed);
}

TEST(BodyStream, DroppingTheConsumersEndReleasesABlockedProducer) {
  BodyStream::Ends ends = BodyStream::make(4);
  ASSERT_TRUE(ends.producer->push("full"));
  std::promise<bool> result;
  std::thread producer([&] { result.set_value(ends.producer->push("more")); });
  std::this_thread::sleep_for(50ms);
  ends.consumer.reset();  // the connection went away without a word
  auto f = result.get_future();
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready) << "the producer stayed blocked";
  EXPECT_FALSE(f.get());
  producer.join();
  EXPECT_FALSE(ends.producer->push("after")) << "a cancelled stream took more";
}

TEST(BodyStream, CancellingWakesAWaitingConsumerAndNeverPosesAsWhole) {
  BodyStream::Ends ends = BodyStream::make(1024);
  ends.producer->push("queued");
  ends.producer->finish(true);
  ends.producer->cancel();  // the server stops before the queued chunk went out
  EXPECT_EQ(ends.consumer->take(nullptr).state, BodyStream::State::cancelled);

  BodyStream::Ends other = BodyStream::make(1024);
  bool called = false;
  other.consumer->take([&] { called = true; });
  other.producer->cancel();
  EXPECT_TRUE(called);
}

// offer(): the event loop's push, which never waits.
TEST(BodyStream, OfferNeverWaitsAndCallsRoomOnceTheConsumerTook) {
  BodyStream::Ends ends = BodyStream::make(10);
  int rooms = 0;
  EXPECT_EQ(ends.producer->offer("abc", [&] { ++rooms; }), BodyStream::Offer::taken);
  // Past the capacity it is still queued (never lost), and the producer is told to wait.
  EXPECT_EQ(ends.producer->offer(std::string(20, 'x'), [&] { ++rooms; }), BodyStream::Offer::full);
  EXPECT_EQ(rooms, 0);
  BodyStream::Taken t = ends.consumer->take(nullptr);
  ASSERT_EQ(t.chunks.size(), 2u);
  EXPECT_EQ(t.chunks[1].size(), 20u);
  EXPECT_EQ(rooms, 1) << "room was not called when the consumer took what was queued";
  ends.consumer->take(nullptr);
  EXPECT_EQ(rooms, 1) << "room is called once per full offer";
}

TEST(BodyStream, OfferAfterTheClientLeftSaysSoAndAPendingRoomIsCalled) {
  BodyStream::Ends ends = BodyStream::make(4);
  int rooms = 0;
  EXPECT_EQ(ends.producer->offer("abcdef", [&] { ++rooms; }), BodyStream::Offer::full);
  ends.consumer.reset();  // the connection dropped the answer: cancelled
  EXPECT_EQ(rooms, 1) << "a producer waiting for room must learn the client left";
  EXPECT_EQ(ends.producer->offer("more", [&] { ++rooms; }), BodyStream::Offer::cancelled);
}

// --- a file's bytes fed to a stream (server/model/file_body.hpp) ---

namespace {

// A temporary file holding `data`, removed at the end; `fd()` opens it anew.
class TempFile {
 public:
  explicit TempFile(const std::string& data) {
    char name[] = "/tmp/gilgamesh-file-body-XXXXXX";
    const int fd = ::mkstemp(name);
    EXPECT_GE(fd, 0);
    path_ = name;
    EXPECT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    ::close(fd);
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  Fd fd() const { return Fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC)); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + i % 26);
  return s;
}

// Everything the consumer gets until the stream ends, taking whenever asked; its last state.
BodyStream::State drain(const std::shared_ptr<BodyStream>& consumer, std::string& out) {
  for (int i = 0; i < 10000; ++i) {
    BodyStream::Taken t = consumer->take(nullptr);
    for (const std::string& c : t.chunks) out += c;
    if (t.state != BodyStream::State::more) return t.state;
  }
  return BodyStream::State::more;
}

int open_fds() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += ::fcntl(fd, F_GETFD) >= 0;
  return n;
}

}  // namespace

TEST(FileBody, TheRangeComesWholeInChunksWithAtMostTheBufferWaiting) {
  const std::string data = pattern(5 * FileBody::kChunk + 123);
  TempFile file(data);
  const int before = open_fds();
  std::shared_ptr<BodyStream> consumer = stream_file(file.fd(), 100, data.size() - 200, nullptr);
  // Read ahead on the calling thread, up to the buffer, no more.
  BodyStream::Taken first = consumer->take(nullptr);
  std::size_t waiting = 0;
  for (const std::string& c : first.chunks) {
    EXPECT_LE(c.size(), FileBody::kChunk);
    waiting += c.size();
  }
  EXPECT_GE(waiting, FileBody::kChunk);
  EXPECT_LE(waiting, FileBody::kBuffered);
  std::string got;
  for (const std::string& c : first.chunks) got += c;
  EXPECT_EQ(drain(consumer, got), BodyStream::State::finished);
  EXPECT_EQ(got, data.substr(100, data.size() - 200));
  EXPECT_EQ(open_fds(), before) << "the file was not closed at the end";
}

TEST(FileBody, AnEmptyRangeFinishesAtOnce) {
  TempFile file("abc");
  std::shared_ptr<BodyStream> consumer = stream_file(file.fd(), 3, 0, nullptr);
  BodyStream::Taken t = consumer->take(nullptr);
  EXPECT_TRUE(t.chunks.empty());
  EXPECT_EQ(t.state, BodyStream::State::finished);
}

TEST(FileBody, AFileShorterThanPromisedFailsTheBodyAndSaysWhere) {
  const std::string data = pattern(3 * FileBody::kChunk);
  TempFile file(data);
  std::uint64_t failed_at = 0;
  bool failed = false;
  std::shared_ptr<BodyStream> consumer = stream_file(file.fd(), 0, 5 * FileBody::kChunk, [&](std::uint64_t at) {
    failed = true;
    failed_at = at;
  });
  std::string got;
  EXPECT_EQ(drain(consumer, got), BodyStream::State::failed);
  EXPECT_TRUE(failed);
  EXPECT_EQ(failed_at, 3 * FileBody::kChunk);
  EXPECT_EQ(got, data);
}

TEST(FileBody, AClientThatLeavesClosesTheFile) {
  TempFile file(pattern(10 * FileBody::kChunk));
  const int before = open_fds();
  {
    std::shared_ptr<BodyStream> consumer = stream_file(file.fd(), 0, 10 * FileBody::kChunk, nullptr);
    EXPECT_EQ(open_fds(), before + 1);  // waiting for room
    consumer->take(nullptr);
  }  // the consumer's end dropped: the stream is cancelled
  EXPECT_EQ(open_fds(), before) << "the file stayed open after the client left";
}

// The bounded buffer between a handler's thread and its connection
// (server/model/body_stream.hpp): order, backpressure, the end, cancellation.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "server/model/body_stream.hpp"

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

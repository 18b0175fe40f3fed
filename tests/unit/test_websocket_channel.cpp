// The channel between a WebSocket's connection and its app's event loop
// (server/model/websocket_channel.hpp): order, the bounded send buffer and its
// room callback, read credit, the close after what was sent, one end only.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/model/websocket_channel.hpp"

using namespace gilgamesh;

namespace {

WebSocketChannel::Message text(std::string s) { return {true, std::move(s)}; }

}  // namespace

TEST(WebSocketChannel, MessagesComeOutInOrderAndWakeTheConnectionOnce) {
  WebSocketChannel ch(1024);
  int wakes = 0;
  WebSocketChannel::Work w = ch.take(true, [&] { ++wakes; });
  EXPECT_TRUE(w.messages.empty());
  EXPECT_EQ(ch.send(text("one"), nullptr), WebSocketChannel::Offer::taken);
  EXPECT_EQ(ch.send({false, "two"}, nullptr), WebSocketChannel::Offer::taken);
  EXPECT_EQ(wakes, 1) << "the connection's callback is called once";
  w = ch.take(true, nullptr);
  ASSERT_EQ(w.messages.size(), 2u);
  EXPECT_TRUE(w.messages[0].text);
  EXPECT_EQ(w.messages[0].data, "one");
  EXPECT_FALSE(w.messages[1].text);
  EXPECT_EQ(w.messages[1].data, "two");
}

TEST(WebSocketChannel, AFullBufferCallsRoomOnceTheConnectionTookIt) {
  WebSocketChannel ch(10);
  int rooms = 0;
  EXPECT_EQ(ch.send(text(std::string(10, 'a')), [&] { ++rooms; }), WebSocketChannel::Offer::full);
  // The connection is still writing the last messages: they stay queued, no room yet.
  EXPECT_TRUE(ch.take(false, nullptr).messages.empty());
  EXPECT_EQ(rooms, 0);
  EXPECT_EQ(ch.take(true, nullptr).messages.size(), 1u);
  EXPECT_EQ(rooms, 1);
}

TEST(WebSocketChannel, ReadsAreCountedAndTheCloseComesOnceAfterTheMessages) {
  WebSocketChannel ch(1024);
  ch.more();
  ch.more();
  ch.send(text("last words"), nullptr);
  ch.close(4001, "bye");
  ch.close(1000, "");  // only the first close counts
  EXPECT_EQ(ch.send(text("too late"), nullptr), WebSocketChannel::Offer::closed);
  WebSocketChannel::Work w = ch.take(true, nullptr);
  EXPECT_EQ(w.reads, 2u);
  ASSERT_EQ(w.messages.size(), 1u);
  ASSERT_TRUE(w.close.has_value());
  EXPECT_EQ(w.close->first, 4001);
  EXPECT_EQ(w.close->second, "bye");
  EXPECT_FALSE(ch.take(true, nullptr).close.has_value());
}

TEST(WebSocketChannel, TheLoopHearsMessagesThenOneEnd) {
  WebSocketChannel ch(1024);
  std::vector<WebSocketChannel::Event> heard;
  ch.attach_loop([&](WebSocketChannel::Event&& e) { heard.push_back(std::move(e)); });
  int rooms = 0;
  ch.send(text(std::string(2000, 'x')), [&] { ++rooms; });
  ch.received(text("hello"));
  ch.ended(1001, "");
  ch.ended(1006, "");    // once per socket
  ch.received(text("late"));  // after the end: dropped
  ASSERT_EQ(heard.size(), 2u);
  EXPECT_FALSE(heard[0].ended);
  EXPECT_EQ(heard[0].message.data, "hello");
  EXPECT_TRUE(heard[1].ended);
  EXPECT_EQ(heard[1].code, 1001);
  EXPECT_EQ(rooms, 1) << "a send() waiting for room is let go at the end";
  EXPECT_TRUE(ch.is_ended());
  EXPECT_EQ(ch.send(text("x"), nullptr), WebSocketChannel::Offer::closed);
}

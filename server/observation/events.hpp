// GET /events: the /stats snapshot once a second as server-sent events,
// written by the I/O threads, never by Python.
//
// What a client reads on one stream:
//   HTTP/1.1 200 OK            Content-Type: text/event-stream, Cache-Control: no-store,
//                              Transfer-Encoding: chunked, Connection: close
//                              (HTTP/1.0: no chunking, the body ends when the connection does)
//   retry: 3000                how long EventSource waits before it reconnects (ms)
//   data: {...}                a snapshot at once, then one a second; the JSON of GET /stats
//   event: shutdown            on SIGTERM/SIGINT, then the last chunk, then the connection closes
//   data: {}
// Each event ends with an empty line. A client that stops reading is dropped
// after a write timeout; a tick that finds the previous event still being
// written is skipped, so a slow reader never makes the server queue events.
//
// A stream takes the connection over from the HTTP session, as Beast's
// advanced_server hands a socket to its websocket session; it stays counted
// in ServerStats::connections_open. Nothing is scheduled while no stream is
// open: each stream owns its one-second timer.
#pragma once

#include <boost/asio/generic/stream_protocol.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_set>

#include "server/observation/stats.hpp"

namespace gilgamesh {

class EventStream;

class EventStreams {
 public:
  // `snapshot` builds the JSON of one event; it runs on an I/O thread.
  EventStreams(ServerStats& stats, std::function<std::string()> snapshot);
  EventStreams(const EventStreams&) = delete;
  EventStreams& operator=(const EventStreams&) = delete;

  // Takes the connection over (on the connection's strand, right after the
  // request was read) and streams until the client leaves or shutdown().
  // `access_line`, when the access log is on: the stream's line once it ends, given how long
  // it lasted and how many events it sent.
  using AccessLine = std::function<std::string(std::chrono::nanoseconds lasted, std::size_t events)>;
  void start(boost::asio::generic::stream_protocol::socket socket, unsigned http_version, std::string request_id,
             AccessLine access_line);
  // Ends every stream: a last "shutdown" event, then close. Later start()s
  // close their connection at once. Thread-safe.
  void shutdown();
  // Streams still open (their connection not yet closed).
  std::size_t open() const;

 private:
  friend class EventStream;
  void remove(EventStream* stream);

  ServerStats& stats_;
  std::function<std::string()> snapshot_;
  mutable std::mutex mutex_;
  std::unordered_set<EventStream*> streams_;
  bool stopped_ = false;
};

}  // namespace gilgamesh

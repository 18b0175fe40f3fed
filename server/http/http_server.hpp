// The HTTP/1.1 front: listener, sessions, built-in endpoints, graceful
// shutdown. It sees Python only through the Executor interface.
#pragma once

#include <memory>
#include <stdexcept>

#include "server/model/executor.hpp"
#include "server/model/options.hpp"

namespace gilgamesh {

// Why the listening socket could not be opened, in words for the user.
class ListenError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class HttpServer {
 public:
  // Binds the listening socket; throws ListenError if it cannot.
  HttpServer(const ServerConfig& config, Executor& executor);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (useful with --port 0).
  unsigned short port() const;
  enum class Outcome {
    stopped,                // drained and stopped cleanly
    handlers_left_running,  // a handler still ran at the deadline: exit without finalizing Python
  };
  // Serves: starts the executor's workers while the listener already answers
  // (rethrows its StartupError), serves until SIGTERM/SIGINT, then drains
  // within --graceful-timeout and stops the executor. A second signal exits the
  // process at once (status 1).
  Outcome run();

  struct Impl;  // sessions and the listener live here (http_server.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gilgamesh

// The HTTP/1.1 front: listener, sessions, built-in endpoints, graceful
// shutdown. It sees Python only through the Executor interface.
#pragma once

#include <memory>

#include "../pyworkers/executor.hpp"
#include "config.hpp"

namespace gilgamesh {

class HttpServer {
 public:
  // Binds the listening socket (throws std::system_error if it cannot).
  HttpServer(const ServerConfig& config, Executor& executor);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (useful with --port 0).
  unsigned short port() const;
  // Serves until SIGTERM/SIGINT, then drains within --graceful-timeout and
  // stops the executor. Returns false if handlers were still running at the
  // deadline (the caller must then exit without finalizing Python).
  bool run();

  struct Impl;  // sessions and the listener live here (http_server.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gilgamesh

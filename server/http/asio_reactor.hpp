#pragma once
// The server's Reactor (server/model/reactor.hpp): each watch waits on its
// descriptor in the server's io_context, so that the I/O thread that finds it
// readable runs its callback, and what that callback posts to a connection (a
// job's answer) runs on the same thread without waking another.
#include <boost/asio/io_context.hpp>

#include "server/model/reactor.hpp"

namespace gilgamesh {

class AsioReactor final : public Reactor {
 public:
  explicit AsioReactor(boost::asio::io_context& ioc) : ioc_(ioc) {}
  std::unique_ptr<Watch> watch(int fd, std::function<bool()> on_readable) override;

 private:
  boost::asio::io_context& ioc_;
};

}  // namespace gilgamesh

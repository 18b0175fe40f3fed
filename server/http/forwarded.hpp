// Behind a reverse proxy (nginx, a load balancer, a Kubernetes ingress), the
// connection comes from the proxy: the client's address and whether it spoke
// HTTPS arrive as X-Forwarded-For and X-Forwarded-Proto. They are believed only
// from the peers named by --forwarded-allow-ips (default: loopback), as
// gunicorn's --forwarded-allow-ips and uvicorn's --proxy-headers do; anyone else
// could set them to anything.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh::forwarded {

inline constexpr const char* kDefaultAllowIps = "127.0.0.1,::1";

// The peers whose forwarding headers are believed.
class TrustedProxies {
 public:
  // Comma-separated addresses and networks ("127.0.0.1,::1", "10.0.0.0/8, fd00::/8"),
  // or "*" for every peer; "" trusts none. Throws std::invalid_argument naming the
  // entry it cannot read.
  static TrustedProxies parse(std::string_view list);

  bool trusts(const boost::asio::ip::address& address) const;
  // Not an address (nor "[v6]"): false.
  bool trusts(std::string_view address) const;
  bool none() const { return !all_ && v4_.empty() && v6_.empty(); }

 private:
  bool all_ = false;
  std::vector<boost::asio::ip::network_v4> v4_;
  std::vector<boost::asio::ip::network_v6> v6_;
};

// An address as X-Forwarded-For carries it: "203.0.113.7", "2001:db8::1" or
// "[2001:db8::1]"; IPv4-mapped IPv6 as IPv4. Nothing else (a port, a name,
// "unknown") parses: false.
bool parse_address(std::string_view text, boost::asio::ip::address& out);

// When the request's peer (remote_addr) is trusted: its scheme from the last
// X-Forwarded-Proto value (http, https, ws or wss; "https" for the secure two),
// and its client from X-Forwarded-For read from the right, past the trusted
// proxies: the first address not trusted (every one trusted: the leftmost),
// with port 0 (the client's port is not forwarded). A header that does not
// parse changes nothing. Otherwise the request is left as it came. A peer on a UNIX socket
// (`unix_peer`, --uds: only a process on this machine that may open the socket file) is
// trusted unless the list is empty, as gunicorn trusts one.
void apply(HttpRequestData& request, const TrustedProxies& trusted, bool unix_peer = false);

// A client as the access log names it: "203.0.113.7:51234", "[2001:db8::1]:51234",
// the address alone when its port is not known (0: a forwarded client), "-" when
// there is no address.
std::string client_text(std::string_view address, std::uint16_t port);

}  // namespace gilgamesh::forwarded

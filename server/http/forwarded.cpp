#include "server/http/forwarded.hpp"

#include <boost/asio/ip/address_v4.hpp>
#include <boost/asio/ip/address_v6.hpp>
#include <boost/beast/core/string.hpp>

#include <algorithm>
#include <stdexcept>

#include "server/http/exchange.hpp"

namespace gilgamesh::forwarded {

namespace ip = boost::asio::ip;
namespace beast = boost::beast;

namespace {

// The comma-separated items of a list, trimmed, empty ones skipped.
std::vector<std::string_view> items(std::string_view list) {
  std::vector<std::string_view> out;
  while (true) {
    const auto comma = list.find(',');
    if (auto item = exchange::trim_ows(list.substr(0, comma)); !item.empty()) out.push_back(item);
    if (comma == std::string_view::npos) return out;
    list.remove_prefix(comma + 1);
  }
}

ip::address unmapped(const ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return ip::make_address_v4(ip::v4_mapped, a.to_v6());
  return a;
}

}  // namespace

bool parse_address(std::string_view text, ip::address& out) {
  if (text.size() > 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
  if (text.empty() || text.size() > 64) return false;
  boost::system::error_code ec;
  const ip::address a = ip::make_address(std::string(text), ec);
  if (ec) return false;
  out = unmapped(a);
  return true;
}

TrustedProxies TrustedProxies::parse(std::string_view list) {
  TrustedProxies out;
  for (std::string_view item : items(list)) {
    if (item == "*") {
      out.all_ = true;
      continue;
    }
    const std::string entry(item);
    const auto slash = item.find('/');
    ip::address address;
    if (!parse_address(item.substr(0, slash), address)) {
      throw std::invalid_argument("'" + entry + "' is not an IP address or network");
    }
    unsigned prefix = address.is_v4() ? 32 : 128;
    if (slash != std::string_view::npos) {
      const std::string_view bits = item.substr(slash + 1);
      const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
      const bool digits = !bits.empty() && bits.size() <= 3 && std::all_of(bits.begin(), bits.end(), is_digit);
      if (!digits || std::stoul(std::string(bits)) > prefix) {
        throw std::invalid_argument("'" + entry + "': the prefix length must be 0.." + std::to_string(prefix));
      }
      prefix = static_cast<unsigned>(std::stoul(std::string(bits)));
    }
    if (address.is_v4()) {
      out.v4_.push_back(ip::network_v4(address.to_v4(), static_cast<unsigned short>(prefix)).canonical());
    } else {
      out.v6_.push_back(ip::network_v6(address.to_v6(), static_cast<unsigned short>(prefix)).canonical());
    }
  }
  return out;
}

bool TrustedProxies::trusts(const ip::address& address) const {
  if (all_) return true;
  // In a network: the address cut to the network's prefix is the network (kept canonical).
  const ip::address a = unmapped(address);
  if (a.is_v4()) {
    return std::any_of(v4_.begin(), v4_.end(), [&](const ip::network_v4& net) {
      return ip::network_v4(a.to_v4(), net.prefix_length()).canonical() == net;
    });
  }
  return std::any_of(v6_.begin(), v6_.end(), [&](const ip::network_v6& net) {
    return ip::network_v6(a.to_v6(), net.prefix_length()).canonical() == net;
  });
}

bool TrustedProxies::trusts(std::string_view address) const {
  ip::address a;
  return parse_address(address, a) && trusts(a);
}

void apply(HttpRequestData& request, const TrustedProxies& trusted, bool unix_peer) {
  if (trusted.none()) return;
  const std::string* proto = nullptr;
  std::string chain;  // every X-Forwarded-For line, joined as one list
  for (const Header& h : request.headers) {
    if (beast::iequals(h.name, "x-forwarded-proto")) {
      proto = &h.value;
    } else if (beast::iequals(h.name, "x-forwarded-for")) {
      chain += (chain.empty() ? "" : ",") + h.value;
    }
  }
  // Most requests carry neither: the peer's address is parsed only for those that do.
  if ((!proto && chain.empty()) || !(unix_peer || trusted.trusts(request.remote_addr))) return;
  if (proto) {
    const std::vector<std::string_view> values = items(*proto);
    if (!values.empty()) {
      const std::string_view last = values.back();
      if (beast::iequals(last, "https") || beast::iequals(last, "wss")) {
        request.scheme = "https";
      } else if (beast::iequals(last, "http") || beast::iequals(last, "ws")) {
        request.scheme = "http";
      }
    }
  }
  const std::vector<std::string_view> hops = items(chain);
  for (auto hop = hops.rbegin(); hop != hops.rend(); ++hop) {
    ip::address a;
    if (!parse_address(*hop, a)) return;  // not an address: the peer stays the client
    if (!trusted.trusts(a) || std::next(hop) == hops.rend()) {
      request.remote_addr = a.to_string();
      request.remote_port = 0;
      return;
    }
  }
}

std::string client_text(std::string_view address, std::uint16_t port) {
  if (address.empty()) return "-";
  if (port == 0) return std::string(address);
  const bool v6 = address.find(':') != std::string_view::npos;
  return (v6 ? "[" : "") + std::string(address) + (v6 ? "]:" : ":") + std::to_string(port);
}

}  // namespace gilgamesh::forwarded

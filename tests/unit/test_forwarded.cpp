// --forwarded-allow-ips and the X-Forwarded-For / X-Forwarded-Proto rules (server/http/forwarded.hpp).
#include <gtest/gtest.h>

#include <stdexcept>

#include "server/http/forwarded.hpp"

namespace gilgamesh::forwarded {
namespace {

HttpRequestData from(const std::string& peer, std::vector<Header> headers) {
  HttpRequestData r;
  r.remote_addr = peer;
  r.remote_port = 40000;
  r.headers = std::move(headers);
  return r;
}

TEST(Forwarded, TrustsAddressesAndNetworks) {
  const auto t = TrustedProxies::parse(" 127.0.0.1, ::1 ,10.0.0.0/8,fd00::/8, 192.168.1.77/24");
  EXPECT_TRUE(t.trusts("127.0.0.1"));
  EXPECT_TRUE(t.trusts("::1"));
  EXPECT_TRUE(t.trusts("::ffff:127.0.0.1"));  // a dual-stack listener's IPv4 peer
  EXPECT_TRUE(t.trusts("10.250.3.4"));
  EXPECT_TRUE(t.trusts("fd12:3456::1"));
  EXPECT_TRUE(t.trusts("192.168.1.3"));  // host bits in the entry: its network
  EXPECT_FALSE(t.trusts("127.0.0.2"));
  EXPECT_FALSE(t.trusts("11.0.0.1"));
  EXPECT_FALSE(t.trusts("fe80::1"));
  EXPECT_FALSE(t.trusts("192.168.2.3"));
  EXPECT_FALSE(t.trusts("not an address"));
  EXPECT_FALSE(t.none());
}

TEST(Forwarded, StarTrustsEveryPeerAndEmptyNone) {
  EXPECT_TRUE(TrustedProxies::parse("*").trusts("203.0.113.9"));
  EXPECT_TRUE(TrustedProxies::parse("").none());
  EXPECT_TRUE(TrustedProxies::parse(" , ").none());
  EXPECT_FALSE(TrustedProxies::parse("").trusts("127.0.0.1"));
  EXPECT_TRUE(TrustedProxies::parse("0.0.0.0/0").trusts("8.8.8.8"));
}

TEST(Forwarded, RefusesWhatIsNotAnAddress) {
  for (const char* bad : {"localhost", "10.0.0.0/33", "::1/129", "10.0.0.0/", "10.0.0.0/x", "1.2.3.4:80",
                          "127.0.0.1,nginx"}) {
    EXPECT_THROW(TrustedProxies::parse(bad), std::invalid_argument) << bad;
  }
  try {
    TrustedProxies::parse("127.0.0.1,nginx");
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'nginx'"), std::string::npos) << e.what();
  }
}

TEST(Forwarded, ATrustedProxyGivesTheClientAndScheme) {
  const auto t = TrustedProxies::parse("127.0.0.1,::1");
  auto r = from("127.0.0.1", {{"X-Forwarded-For", "203.0.113.7"}, {"X-Forwarded-Proto", "https"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "203.0.113.7");
  EXPECT_EQ(r.remote_port, 0);
  EXPECT_EQ(r.scheme, "https");
  // Names in any case; "wss" is secure too; IPv6 in brackets.
  r = from("::1", {{"x-forwarded-for", "[2001:db8::5]"}, {"X-FORWARDED-PROTO", "WSS"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "2001:db8::5");
  EXPECT_EQ(r.scheme, "https");
}

TEST(Forwarded, AnUntrustedPeerChangesNothing) {
  const auto t = TrustedProxies::parse("127.0.0.1");
  auto r = from("198.51.100.2", {{"X-Forwarded-For", "203.0.113.7"}, {"X-Forwarded-Proto", "https"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "198.51.100.2");
  EXPECT_EQ(r.remote_port, 40000);
  EXPECT_EQ(r.scheme, "http");
  r = from("127.0.0.1", {{"X-Forwarded-For", "203.0.113.7"}});
  apply(r, TrustedProxies::parse(""));
  EXPECT_EQ(r.remote_addr, "127.0.0.1");
}

TEST(Forwarded, TheClientIsTheFirstUntrustedHopFromTheRight) {
  const auto t = TrustedProxies::parse("127.0.0.1,10.0.0.0/8");
  // A client that sends its own X-Forwarded-For cannot pose as another: nginx appends the real
  // peer, and reading from the right stops there.
  auto r = from("127.0.0.1", {{"X-Forwarded-For", "1.1.1.1, 203.0.113.7, 10.1.2.3"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "203.0.113.7");
  // Several header lines are one list.
  r = from("127.0.0.1", {{"X-Forwarded-For", "1.1.1.1"}, {"X-Forwarded-For", "203.0.113.8, 10.0.0.9"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "203.0.113.8");
  // Every hop trusted: the leftmost.
  r = from("127.0.0.1", {{"X-Forwarded-For", "10.9.9.9, 10.0.0.1"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "10.9.9.9");
  // Garbage where the client should be: the peer stays the client.
  r = from("127.0.0.1", {{"X-Forwarded-For", "203.0.113.7, unknown"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "127.0.0.1");
  // Garbage further left than the client does not matter.
  r = from("127.0.0.1", {{"X-Forwarded-For", "<script>, 203.0.113.7"}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "203.0.113.7");
  r = from("127.0.0.1", {{"X-Forwarded-For", " , "}});
  apply(r, t);
  EXPECT_EQ(r.remote_addr, "127.0.0.1");
}

TEST(Forwarded, TheSchemeIsTheLastProtoValueAndOnlyAKnownOne) {
  const auto t = TrustedProxies::parse("127.0.0.1");
  auto r = from("127.0.0.1", {{"X-Forwarded-Proto", "https, http"}});
  apply(r, t);
  EXPECT_EQ(r.scheme, "http");
  r = from("127.0.0.1", {{"X-Forwarded-Proto", "http"}, {"X-Forwarded-Proto", "https"}});
  apply(r, t);
  EXPECT_EQ(r.scheme, "https");
  r = from("127.0.0.1", {{"X-Forwarded-Proto", "gopher"}});
  apply(r, t);
  EXPECT_EQ(r.scheme, "http");
}

TEST(Forwarded, TheAccessLogNamesAClientWithItsPortWhenItHasOne) {
  EXPECT_EQ(client_text("127.0.0.1", 51234), "127.0.0.1:51234");
  EXPECT_EQ(client_text("2001:db8::1", 443), "[2001:db8::1]:443");
  EXPECT_EQ(client_text("203.0.113.7", 0), "203.0.113.7");  // forwarded: no port
  EXPECT_EQ(client_text("", 0), "-");
}

}  // namespace
}  // namespace gilgamesh::forwarded

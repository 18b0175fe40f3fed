#include "server/observation/access_log.hpp"

#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/core/string.hpp>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace gilgamesh {

enum class AccessLogFormat::Atom : char {
  literal = 0, client = 'h', dash = 'l', user = 'u', time = 't', request_line = 'r', method = 'm',
  path = 'U', query = 'q', protocol = 'H', status = 's', bytes = 'B', bytes_or_dash = 'b', referer = 'f',
  user_agent = 'a', pid = 'p', seconds = 'T', milliseconds = 'M', microseconds = 'D', decimal_seconds = 'L',
  request_header = 'i', response_header = 'o',
  // Our own line's, which no format can name:
  client_and_port = '1', target = '2', bytes_or_streamed = '3', milliseconds_3 = '4', request_id = '5',
  events = '6', seconds_1 = '7',
};

namespace {

constexpr std::string_view kKnown = "hlutrmUqHsBbfapTMDL";

std::string_view or_dash(std::optional<std::string_view> value) {
  return value && !value->empty() ? *value : std::string_view("-");
}

// The user name of `Authorization: Basic ...`, as gunicorn's %(u)s; '-' otherwise.
std::string basic_user(const AccessEntry& e) {
  const auto auth = e.request_header ? e.request_header("authorization") : std::nullopt;
  if (!auth || !boost::beast::iequals(auth->substr(0, 6), "basic ")) return "-";
  const std::string_view coded = auth->substr(6);
  // decoded_size() assumes a length that is a multiple of 4; a client's may not be (unpadded),
  // and decode() then writes up to two bytes more: room for a whole last group.
  std::string plain(boost::beast::detail::base64::decoded_size(coded.size() + 3), '\0');
  const auto [written, read] = boost::beast::detail::base64::decode(plain.data(), coded.data(), coded.size());
  plain.resize(written);
  const auto colon = plain.find(':');
  std::string user = plain.substr(0, colon);
  for (char& c : user) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';  // one line per request
  }
  return colon == std::string::npos || user.empty() ? "-" : user;
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string decimal(double value, int places) {
  char buf[48];
  const int n = std::snprintf(buf, sizeof buf, "%.*f", places, value);
  return std::string(buf, static_cast<std::size_t>(n));
}

std::string clf_time(std::chrono::system_clock::time_point when) {
  const std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm utc{};
  gmtime_r(&t, &utc);
  char out[40];
  const std::size_t n = std::strftime(out, sizeof out, "[%d/%b/%Y:%H:%M:%S +0000]", &utc);
  return std::string(out, n);
}

}  // namespace

void AccessLogFormat::add_text(std::string_view text) {
  if (parts_.empty() || parts_.back().atom != Atom::literal) parts_.push_back({"", Atom::literal});
  parts_.back().text += text;
}

AccessLogFormat AccessLogFormat::standard() {
  AccessLogFormat f;
  for (Atom atom : {Atom::client_and_port, Atom::method, Atom::target, Atom::status, Atom::bytes_or_streamed}) {
    f.add(atom);
    f.add_text(" ");
  }
  f.add(Atom::milliseconds_3);
  f.add_text("ms ");
  f.add(Atom::request_id);
  return f;
}

AccessLogFormat AccessLogFormat::standard_event_stream() {
  AccessLogFormat f;
  f.add(Atom::client_and_port);
  f.add_text(" GET /events 200 stream: ");
  f.add(Atom::events);
  f.add_text(" events in ");
  f.add(Atom::seconds_1);
  f.add_text(" s ");
  f.add(Atom::request_id);
  return f;
}

AccessLogFormat::AccessLogFormat(std::string_view format) {
  std::size_t i = 0;
  while (i < format.size()) {
    const std::size_t percent = format.find('%', i);
    add_text(format.substr(i, percent == std::string_view::npos ? std::string_view::npos : percent - i));
    if (percent == std::string_view::npos) break;
    if (format.substr(percent, 2) == "%%") {
      add_text("%");
      i = percent + 2;
      continue;
    }
    const std::size_t end = format.find(")s", percent);
    if (format.substr(percent, 2) != "%(" || end == std::string_view::npos) {
      throw std::invalid_argument("a '%' starts neither an atom, %(NAME)s, nor %% (at \"" +
                                  std::string(format.substr(percent, 12)) + "\")");
    }
    const std::string_view name = format.substr(percent + 2, end - percent - 2);
    i = end + 2;
    if (name.size() == 1 && kKnown.find(name[0]) != std::string_view::npos) {
      add(static_cast<Atom>(name[0]));
      continue;
    }
    if (name.size() >= 4 && name.front() == '{' && name[name.size() - 2] == '}' &&
        std::string_view("ioe").find(name.back()) != std::string_view::npos) {
      const std::string inner = lower(name.substr(1, name.size() - 3));
      if (name.back() != 'e') {
        parts_.push_back({inner, static_cast<Atom>(name.back())});
        continue;
      }
      // gunicorn's %({name}e)s: the process's environment, named in lower case; fixed at start.
      const char* value = std::getenv(upper(inner).c_str());
      if (value == nullptr) value = std::getenv(inner.c_str());
      add_text(value != nullptr && *value != '\0' ? value : "-");
      continue;
    }
    throw std::invalid_argument("unknown atom %(" + std::string(name) +
                                ")s (known: h l u t r m U q H s B b f a p T M D L, {header}i, {header}o, "
                                "{variable}e)");
  }
}

std::string AccessLogFormat::render(const AccessEntry& e) const {
  std::string out;
  out.reserve(160);
  const std::string_view target = e.target;
  const auto question = target.find('?');
  const std::string_view protocol = e.version == 10 ? "HTTP/1.0" : "HTTP/1.1";
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(e.took).count();
  auto request = [&e](std::string_view name) { return e.request_header ? e.request_header(name) : std::nullopt; };
  for (const Part& p : parts_) {
    switch (p.atom) {
      case Atom::literal: out += p.text; break;
      case Atom::client: out += e.client.empty() ? std::string_view("-") : e.client; break;
      case Atom::dash: out += '-'; break;
      case Atom::user: out += basic_user(e); break;
      case Atom::time: out += clf_time(e.arrived); break;
      case Atom::request_line:
        out.append(e.method).append(" ").append(target).append(" ").append(protocol);
        break;
      case Atom::method: out += e.method; break;
      case Atom::path: out += target.substr(0, question); break;
      case Atom::query: if (question != std::string_view::npos) out += target.substr(question + 1); break;
      case Atom::protocol: out += protocol; break;
      case Atom::status: out += std::to_string(e.status); break;
      case Atom::bytes: out += std::to_string(e.body_bytes.value_or(0)); break;
      case Atom::bytes_or_dash: out += e.body_bytes ? std::to_string(*e.body_bytes) : "-"; break;
      case Atom::referer: out += or_dash(request("referer")); break;
      case Atom::user_agent: out += or_dash(request("user-agent")); break;
      case Atom::pid: out += std::to_string(getpid()); break;
      case Atom::seconds: out += std::to_string(micros / 1000000); break;
      case Atom::milliseconds: out += std::to_string(micros / 1000); break;
      case Atom::microseconds: out += std::to_string(micros); break;
      case Atom::decimal_seconds: out += decimal(static_cast<double>(micros) / 1e6, 6); break;
      case Atom::request_header: out += or_dash(request(p.text)); break;
      case Atom::response_header:
        out += or_dash(e.response_header ? e.response_header(p.text) : std::nullopt);
        break;
      case Atom::client_and_port: out += e.client_and_port; break;
      case Atom::target: out += target; break;
      case Atom::bytes_or_streamed: out += e.body_bytes ? std::to_string(*e.body_bytes) : "streamed"; break;
      case Atom::milliseconds_3:
        out += decimal(std::chrono::duration<double, std::milli>(e.took).count(), 3);
        break;
      case Atom::request_id: out += e.request_id; break;
      case Atom::events: out += std::to_string(e.events); break;
      case Atom::seconds_1: out += decimal(std::chrono::duration<double>(e.took).count(), 1); break;
    }
  }
  return out;
}

}  // namespace gilgamesh

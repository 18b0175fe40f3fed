#include "server/model/response.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>

namespace gilgamesh {

HttpResponseData make_error_response(int status, const std::string& message,
                                     const std::string& request_id) {
  HttpResponseData r;
  r.status = status;
  r.content_type = "application/json";
  r.body = nlohmann::json{{"error", message}, {"request_id", request_id}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}


bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

std::string replace_invalid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (b0 < 0x80) {
      len = 1;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;  // overlong
      if (b0 == 0xED) hi = 0x9F;  // surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;  // overlong
      if (b0 == 0xF4) hi = 0x8F;  // past U+10FFFF
    }
    bool ok = len > 0 && i + len <= s.size();
    for (std::size_t k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    }
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

std::string log_quoted(std::string_view s, std::size_t limit) {
  std::string out = "'";
  for (unsigned char c : s.substr(0, limit)) {
    if (c < 0x20 || c >= 0x7f || c == '\'' || c == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + (s.size() > limit ? "...'" : "'");
}

namespace {

// Field values: visible ASCII, obs-text (0x80-0xFF) and SP/HTAB inside.
bool is_field_value(std::string_view v) {
  for (unsigned char c : v) {
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

}  // namespace

namespace {
ResponseDefaults& defaults_storage() {
  static ResponseDefaults defaults;
  return defaults;
}
}  // namespace

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string imf_date(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  const std::size_t n = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return std::string(buf, n);
}

void set_response_defaults(ResponseDefaults defaults) { defaults_storage() = std::move(defaults); }

const ResponseDefaults& response_defaults() { return defaults_storage(); }

std::optional<Header> parse_default_header(std::string_view text, std::string& error) {
  const auto colon = text.find(':');
  Header h{std::string(colon == std::string_view::npos ? text : text.substr(0, colon)),
           std::string(colon == std::string_view::npos ? std::string_view{} : trim_ows(text.substr(colon + 1)))};
  if (colon == std::string_view::npos || !is_token(h.name)) {
    error = "takes NAME:VALUE with NAME an HTTP token, as X-Frame-Options:DENY; got " + log_quoted(text);
    return std::nullopt;
  }
  if (!is_field_value(h.value)) {
    error = h.name + " has a value holding a control character: " + log_quoted(h.value);
    return std::nullopt;
  }
  std::string lower = h.name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* own : {"server", "date", "x-request-id", "content-type", "content-length", "transfer-encoding",
                          "connection", "keep-alive", "upgrade", "trailer", "te"}) {
    if (lower == own) {
      error = h.name + " is the server's own field (" +
              (lower == "server" ? std::string("--no-server-header leaves it out") : std::string("set per answer")) +
              ")";
      return std::nullopt;
    }
  }
  return h;
}

std::string response_violation(const HttpResponseData& r) {
  if (r.status < 200 || r.status > 599) {
    // 1xx are interim responses: sent as the final one, a client would wait forever.
    return "status " + std::to_string(r.status) + " is outside 200..599";
  }
  if (!is_field_value(r.content_type)) {
    return "content type " + log_quoted(r.content_type) + " holds a control character";
  }
  std::size_t total = r.content_type.size();
  for (const Header& h : r.headers) {
    if (!is_token(h.name)) return "header name " + log_quoted(h.name) + " is not an HTTP token";
    if (!is_field_value(h.value)) {
      return "header " + h.name + " has a value holding a control character: " + log_quoted(h.value);
    }
    total += h.name.size() + h.value.size() + 4;
    if (total > kMaxHandlerHeaderBytes) {
      return "response headers exceed " + std::to_string(kMaxHandlerHeaderBytes) + " bytes";
    }
  }
  return {};
}

}  // namespace gilgamesh

#include "response.hpp"

#include <nlohmann/json.hpp>

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

namespace {

// Field values: visible ASCII, obs-text (0x80-0xFF) and SP/HTAB inside.
bool is_field_value(std::string_view v) {
  for (unsigned char c : v) {
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

std::string escaped(std::string_view s) {
  std::string out = "'";
  for (unsigned char c : s.substr(0, 80)) {
    if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > 80) out += "...";
  return out + "'";
}

}  // namespace

std::string response_violation(const HttpResponseData& r) {
  if (r.status < 200 || r.status > 599) {
    // 1xx are interim responses: sent as the final one, a client would wait forever.
    return "status " + std::to_string(r.status) + " is outside 200..599";
  }
  if (!is_field_value(r.content_type)) {
    return "content type " + escaped(r.content_type) + " holds a control character";
  }
  std::size_t total = r.content_type.size();
  for (const Header& h : r.headers) {
    if (!is_token(h.name)) return "header name " + escaped(h.name) + " is not an HTTP token";
    if (!is_field_value(h.value)) {
      return "header " + h.name + " has a value holding a control character: " + escaped(h.value);
    }
    total += h.name.size() + h.value.size() + 4;
    if (total > kMaxHandlerHeaderBytes) {
      return "response headers exceed " + std::to_string(kMaxHandlerHeaderBytes) + " bytes";
    }
  }
  return {};
}

}  // namespace gilgamesh

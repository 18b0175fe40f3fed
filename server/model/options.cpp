#include "server/model/options.hpp"

#include <charconv>

namespace gilgamesh {

std::optional<long long> whole_integer(std::string_view text) {
  long long value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end) return std::nullopt;
  return value;
}

// Missing keys keep their defaults, so a field added above needs only its name here.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(HttpOptions, host, port, uds, io_threads, backlog, max_header, max_body,
                                                max_connections, header_timeout, keepalive_timeout,
                                                graceful_timeout, request_timeout, shutdown_delay,
                                                access_log, access_log_format, dashboard, ws_max_message,
                                                ws_ping_interval, ws_ping_timeout, ws_per_message_deflate,
                                                static_mounts, static_routes, static_expires, static_dir_to_file,
                                                server_header, headers)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(PoolOptions, strategy, strategy_reason, python_build,
                                                workers, threads, worker_spin_us, max_queue, max_abandoned,
                                                max_requests, max_requests_jitter, allow_gil, preload,
                                                worker_connections)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(AppOptions, target, kind, lifespan, loop, root_path,
                                                max_response, pythonpath, debug)

void to_json(nlohmann::json& j, const ServerConfig& c) {
  j = {{"http", c.http}, {"pool", c.pool}, {"app", c.app}, {"log_level", c.log_level}};
}

void from_json(const nlohmann::json& j, ServerConfig& c) {
  j.at("http").get_to(c.http);
  j.at("pool").get_to(c.pool);
  j.at("app").get_to(c.app);
  c.log_level = j.value("log_level", c.log_level);
}

}  // namespace gilgamesh

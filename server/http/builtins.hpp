// The built-in endpoints' answers: /healthz, /readyz, /stats, /metrics, the
// route index GET / (JSON: the app's routes and the built-in endpoints), and
// /dashboard and /events. exchange::route decides that a request is for one of
// them; what each answers is here. The figures of /stats and /metrics are
// observation/metrics.hpp's; the dashboard page and its event stream are
// observation/dashboard.hpp's and events.hpp's.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "server/http/exchange.hpp"
#include "server/http/router.hpp"
#include "server/observation/metrics.hpp"

namespace gilgamesh {

nlohmann::json index_json(const ServerView& v);

// The answer of built-in endpoint `which` (not Builtin::none) to a GET, or a
// HEAD when `head`. `draining`: the listener has closed (/healthz answers 503).
exchange::Answer builtin_answer(Builtin which, const ServerView& view, bool draining, bool head,
                                const std::string& request_id);

}  // namespace gilgamesh

// GET /dashboard: one self-contained HTML page. web/dashboard.{html,css,js}
// and the uPlot charting library (web/node_modules, fetched by
// scripts/fetch-web-deps.sh) are inlined into it at build time, so the page
// is one response, loads nothing from elsewhere, and the binary needs no
// files beside it. The page reads GET /events (events.hpp), else polls /stats.
#pragma once

#include <string_view>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh {

std::string_view dashboard_page();
// Sent with the page: a Content-Security-Policy that lets it load nothing
// and talk only to this server, and no caching across server versions.
const std::vector<Header>& dashboard_headers();

}  // namespace gilgamesh

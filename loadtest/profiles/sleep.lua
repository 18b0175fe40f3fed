-- GET /sleep?ms=M: the handler sleeps; I/O-bound, shows how many requests a
-- strategy keeps in flight, not how fast it computes.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "sleep",
  defaults = { ms = 10 },
  requests = function(p)
    return { { path = "/sleep?ms=" .. p.ms, route = "/sleep" } }
  end,
}

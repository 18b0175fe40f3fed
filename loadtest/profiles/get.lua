-- GET PATH: one path given on the command line (path=/starlette/hello); the
-- ASGI workloads use it for routes that have no profile of their own.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "get",
  defaults = { path = "/" },
  requests = function(p)
    return { { path = p.path, route = p.path:match("^[^?]*") } }
  end,
}

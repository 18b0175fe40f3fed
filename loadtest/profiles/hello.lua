-- GET /hello: the trivial handler; measures the dispatch path, not Python.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "hello",
  defaults = {},
  requests = function()
    return { { path = "/hello", route = "/hello" } }
  end,
}

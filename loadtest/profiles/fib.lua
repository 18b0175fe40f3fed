-- GET /fib?n=N: pure-Python recursion, CPU-bound (fib(25) takes a few ms).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "fib",
  defaults = { n = 25 },
  requests = function(p)
    return { { path = "/fib?n=" .. p.n, route = "/fib" } }
  end,
}

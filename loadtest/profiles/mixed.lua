-- A weighted mix of the CPU-bound routes and /hello, in a shuffled order.
-- Weights are requests out of every sum-of-weights sent; override any of them
-- (and any size) with `-- w_hello=0 fib_n=22 ...`.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "mixed",
  defaults = {
    w_hello = 50, w_fib = 20, w_primes = 15, w_mandelbrot = 10, w_nbody = 5,
    fib_n = 22, primes_limit = 100000, mandelbrot_size = 32, nbody_steps = 200,
  },
  requests = function(p)
    return {
      { path = "/hello", route = "/hello", weight = p.w_hello },
      { path = "/fib?n=" .. p.fib_n, route = "/fib", weight = p.w_fib },
      { path = "/primes?limit=" .. p.primes_limit, route = "/primes", weight = p.w_primes },
      { path = "/mandelbrot?size=" .. p.mandelbrot_size, route = "/mandelbrot", weight = p.w_mandelbrot },
      { path = "/nbody?steps=" .. p.nbody_steps, route = "/nbody", weight = p.w_nbody },
    }
  end,
}

-- Shared machinery of the wrk profiles. A profile file does
--
--   local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
--   dofile(dir .. "common.lua").profile{ name = ..., defaults = {...}, requests = function(p) ... end }
--
-- and gets: parameters from the command line (`wrk ... -s fib.lua URL -- n=25`),
-- pre-formatted requests cycled in a weighted, per-thread shuffled order,
-- per-thread counts of responses by status code, and a done() that prints ONE
-- JSON object (the last line of wrk's stdout) with every figure the runner needs.
--
-- wrk runs each thread in its own Lua state; setup() and done() run in a third
-- one. Counts therefore live in each thread's globals and done() collects them
-- with thread:get().

local common = {}

-- JSON -----------------------------------------------------------------------

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
    return named[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

common.null = setmetatable({}, { __tostring = function() return "null" end })

local function encode(value)
  local t = type(value)
  if t == "nil" or value == common.null then
    return "null"
  elseif t == "boolean" then
    return tostring(value)
  elseif t == "number" then
    if value ~= value or value == math.huge or value == -math.huge then return "null" end
    if value == math.floor(value) and math.abs(value) < 2^53 then
      return string.format("%d", value)
    end
    return string.format("%.10g", value)
  elseif t == "string" then
    return encode_string(value)
  elseif t == "table" then
    if value[1] ~= nil then
      local parts = {}
      for i = 1, #value do parts[i] = encode(value[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(value) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local v = value[k]
      if v == nil then v = value[tonumber(k)] end
      parts[#parts + 1] = encode_string(k) .. ":" .. encode(v)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("cannot encode a " .. t .. " as JSON")
end

common.encode = encode

-- Parameters -----------------------------------------------------------------

-- `key=value` words after wrk's `--`, over the profile's defaults.
local function parse_args(defaults, args)
  local params = {}
  for k, v in pairs(defaults) do params[k] = v end
  for _, word in ipairs(args or {}) do
    local k, v = word:match("^([%w_]+)=(.*)$")
    if not k then error("profile argument must be key=value, got '" .. word .. "'") end
    if defaults[k] == nil then
      local known = {}
      for name in pairs(defaults) do known[#known + 1] = name end
      table.sort(known)
      error("unknown profile argument '" .. k .. "' (known: " .. table.concat(known, ", ") .. ")")
    end
    params[k] = tonumber(v) or v
  end
  return params
end

-- Weighted order of request indexes: each index appears `weight` times,
-- shuffled with a per-thread seed so that threads do not march in step.
local function weighted_order(list, seed)
  local order = {}
  for i, r in ipairs(list) do
    local w = r.weight or 1
    if w ~= math.floor(w) or w < 0 then error("request weights must be whole numbers") end
    for _ = 1, w do order[#order + 1] = i end
  end
  if #order == 0 then error("profile has no request with a weight above 0") end
  math.randomseed(seed)
  for i = #order, 2, -1 do
    local j = math.random(i)
    order[i], order[j] = order[j], order[i]
  end
  return order
end

-- The profile ----------------------------------------------------------------

-- spec.name      profile name, echoed in the JSON
-- spec.defaults  parameter table; every key may be overridden as key=value
-- spec.requests  function(params) -> list of {method=, path=, headers=, body=, weight=, route=}
function common.profile(spec)
  local threads = {}

  -- Main state: remember every thread so that done() can read its counters.
  function setup(thread)
    threads[#threads + 1] = thread
    thread:set("thread_index", #threads)
  end

  -- Thread state.
  function init(args)
    params = parse_args(spec.defaults or {}, args)
    local list = spec.requests(params)
    formatted = {}
    for i, r in ipairs(list) do
      formatted[i] = wrk.format(r.method or "GET", r.path, r.headers, r.body)
    end
    order = weighted_order(list, 7919 * (thread_index or 1))
    position = 0
    status_counts = {}
    -- What was sent, per route, so a reader can tell what the mix really was.
    routes = {}
    for i, r in ipairs(list) do routes[i] = r.route or r.path end
    sent_by_index = {}
    for i = 1, #list do sent_by_index[i] = 0 end
  end

  function request()
    position = position % #order + 1
    local i = order[position]
    sent_by_index[i] = sent_by_index[i] + 1
    return formatted[i]
  end

  function response(status)
    status_counts[status] = (status_counts[status] or 0) + 1
  end

  function done(summary, latency, requests)
    local by_status, sent_total = {}, {}
    local goodput, params_out = 0, nil
    for _, thread in ipairs(threads) do
      for code, n in pairs(thread:get("status_counts") or {}) do
        local key = tostring(code)
        by_status[key] = (by_status[key] or 0) + n
        if code >= 200 and code < 300 then goodput = goodput + n end
      end
      local thread_routes = thread:get("routes") or {}
      for i, n in pairs(thread:get("sent_by_index") or {}) do
        local key = thread_routes[i] or tostring(i)
        sent_total[key] = (sent_total[key] or 0) + n
      end
      params_out = params_out or thread:get("params")
    end
    local seconds = summary.duration / 1e6
    local function pct(p) return latency:percentile(p) / 1000 end
    local out = {
      profile = spec.name,
      params = params_out or {},
      threads = #threads,
      duration_s = seconds,
      requests = summary.requests,
      requests_per_s = seconds > 0 and summary.requests / seconds or 0,
      goodput = goodput,
      goodput_per_s = seconds > 0 and goodput / seconds or 0,
      bytes = summary.bytes,
      responses_by_status = by_status,
      sent_by_route = sent_total,
      errors = {
        connect = summary.errors.connect,
        read = summary.errors.read,
        write = summary.errors.write,
        timeout = summary.errors.timeout,
        status_over_399 = summary.errors.status,
      },
      latency_ms = {
        min = latency.min / 1000,
        mean = latency.mean / 1000,
        stdev = latency.stdev / 1000,
        p50 = pct(50),
        p90 = pct(90),
        p99 = pct(99),
        p99_9 = pct(99.9),
        max = latency.max / 1000,
      },
    }
    -- Responses slower than --timeout count as requests (and errors.timeout)
    -- but stay out of the histogram, which may therefore be empty.
    if summary.requests == 0 or latency.min > latency.max then
      for k in pairs(out.latency_ms) do out.latency_ms[k] = common.null end
    end
    io.stdout:write(encode(out), "\n")
    io.stdout:flush()
  end
end

return common

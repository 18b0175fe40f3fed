-- The user's own requests (loadtest/run --request ...), read from the file the
-- runner writes into the run's folder (file=PATH), one per line, tab-separated:
--   weight  METHOD  /path?query  content type  body file (or empty)  label
-- Sent in a weighted, shuffled order; sent_by_route counts them by label.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "requests",
  defaults = { file = "" },
  requests = function(p)
    if p.file == "" then error("requests.lua needs file=PATH (loadtest/run writes it)") end
    local list = {}
    for line in io.lines(p.file) do
      if line ~= "" then
        local weight, method, target, ctype, body_path, label =
          line:match("^(%d+)\t([^\t]+)\t([^\t]+)\t([^\t]*)\t([^\t]*)\t(.*)$")
        if not weight then error("malformed request line: " .. line) end
        local body, headers = nil, nil
        if body_path ~= "" then
          local f = assert(io.open(body_path, "rb"))
          body = f:read("*a")
          f:close()
          headers = { ["Content-Type"] = ctype }
        end
        list[#list + 1] = { method = method, path = target, headers = headers, body = body,
                            weight = tonumber(weight), route = label }
      end
    end
    if #list == 0 then error("no request in " .. p.file) end
    return list
  end,
}

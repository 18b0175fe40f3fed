-- POST /json with a JSON body of `items` records: parsing and serialising.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "common.lua").profile{
  name = "json",
  defaults = { items = 50 },
  requests = function(p)
    local records = {}
    for i = 1, p.items do
      records[i] = string.format(
        '{"id":%d,"name":"item-%d","price":%d.%02d,"tags":["a","b","c"],"in_stock":%s}',
        i, i, i * 3, i % 100, i % 2 == 0 and "true" or "false")
    end
    local body = '{"order":"load-test","items":[' .. table.concat(records, ",") .. ']}'
    return { {
      method = "POST",
      path = "/json",
      route = "/json",
      headers = { ["Content-Type"] = "application/json" },
      body = body,
    } }
  end,
}

-- wrk script for the concurrent single-store benchmark (BENCHMARKS.md,
-- "Concurrent writes"): each request POSTs one memory to /v1/memories with a
-- unique 12-word text, kind "note" and one fixed 384-d vector written with 6
-- decimals, as `memhub bench writes` does.
--   wrk -t2 -c64 -d20s --latency -s scripts/bench/store.lua http://127.0.0.1:PORT
local words = {"alpha","bravo","charlie","delta","echo","foxtrot","golf","hotel",
  "india","juliet","kilo","lima","mike","november","oscar","papa","quebec","romeo",
  "sierra","tango","uniform","victor","whiskey","xray","yankee","zulu"}
local parts = {}
for i = 1, 384 do
  parts[i] = string.format("%.6f", math.sin(i) / 19.6)
end
local vector = "[" .. table.concat(parts, ",") .. "]"
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  local n = counter * 16 + (tid or 0)
  local text = {}
  for i = 1, 12 do
    text[i] = words[(math.floor(n / (26 ^ (i % 4))) + i * 7) % 26 + 1] .. tostring((n + i) % 1000)
  end
  local body = string.format('{"content":"%s %d","kind":"note","embedding":%s}',
    table.concat(text, " "), n, vector)
  return wrk.format("POST", "/v1/memories", {["Content-Type"] = "application/json"}, body)
end

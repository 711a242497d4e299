-- wrk script of bench/serve_load.py: POST one fixed JSON body on every connection (each
-- connection is a closed loop: the next request leaves when the previous answer arrived).
--
--   WRK_BODY   file holding the request body (JSON)
--   WRK_AUTH   optional bearer token
--   WRK_COUNT  "1": also count answers by status and X-Model-Version (slower; hot swap only)
--
-- done() prints one line "WRKJSON {...}" with the totals and latency percentiles in µs.

local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if os.getenv("WRK_COUNT") == "1" then
  statuses = {}
  versions = {}
  function response(status, headers, body)
    local s = tostring(status)
    statuses[s] = (statuses[s] or 0) + 1
    local v = headers["x-model-version"] or headers["X-Model-Version"] or "none"
    versions[v] = (versions[v] or 0) + 1
  end
end

local function merge(into, part)
  if part == nil then return end
  for k, v in pairs(part) do
    into[k] = (into[k] or 0) + v
  end
end

local function encode(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s":%d', k, v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local statuses_all, versions_all = {}, {}
  for _, thread in ipairs(threads) do
    merge(statuses_all, thread:get("statuses"))
    merge(versions_all, thread:get("versions"))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},' ..
    '"statuses":%s,"versions":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, encode(statuses_all), encode(versions_all)))
end

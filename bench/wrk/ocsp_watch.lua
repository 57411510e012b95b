-- wrk script: POST /ocsp cycling through a fixed set of OCSP requests, counting every answer
-- that is not a successful OCSP response (tryLater, internalError, ... or an HTTP error).
--
--   wrk -t1 -c8 -d120s --latency -s bench/wrk/ocsp_watch.lua http://HOST:PORT -- REQUESTS.hex
--
-- REQUESTS.hex: one DER request per line, hex-encoded (bench/incident.py writes it). The
-- count is printed at the end as "OCSP failures: N of M" (bench/incident.py reads it).
-- With DELAY_MS (a third argument) each connection waits that long between requests: a paced
-- load, so the status role is measured answering while the machine's two cores also sign.

local requests = {}
local index = 1
local pause = 0
local threads = {}
failures = 0
answers = 0

local function unhex(line)
  return (line:gsub("%x%x", function(pair) return string.char(tonumber(pair, 16)) end))
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = args[1]
  pause = tonumber(args[2] or "0")
  if file == nil then
    error("usage: wrk ... -s ocsp_watch.lua URL -- REQUESTS.hex")
  end
  local headers = { ["Content-Type"] = "application/ocsp-request" }
  for line in io.lines(file) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", "/ocsp", headers, unhex(line))
    end
  end
  math.randomseed(os.time() + tonumber(tostring(requests):match("0x(%x+)") or "0", 16) % 100000)
  index = math.random(#requests)
end

function request()
  local r = requests[index]
  index = index + 1
  if index > #requests then
    index = 1
  end
  return r
end

function delay()
  return pause
end

-- A successful OCSPResponse is SEQUENCE { ENUMERATED 0, [0] responseBytes }: long; an error
-- is the 5 bytes 30 03 0a 01 <status>.
function response(status, headers, body)
  answers = answers + 1
  if status ~= 200 or #body < 8 or body:byte(1) ~= 0x30 or body:byte(2) == 0x03 then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local failed, total = 0, 0
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("failures")
    total = total + thread:get("answers")
  end
  io.write(string.format("OCSP failures: %d of %d\n", failed, total))
end

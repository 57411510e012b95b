-- wrk script: POST /ocsp cycling through a fixed set of distinct OCSP requests.
--
--   wrk -t2 -c8 -d10s --latency -s bench/wrk/ocsp_mix.lua http://HOST:PORT -- REQUESTS.hex [PATH]
--
-- REQUESTS.hex holds one DER request per line, hex-encoded (bench/ocsp.py writes it: good,
-- revoked and unknown serials, shuffled). Every request is formatted once at start; each wrk
-- thread starts at its own offset so that the threads do not send the same request together.

local requests = {}
local index = 1

local function unhex(line)
  return (line:gsub("%x%x", function(pair) return string.char(tonumber(pair, 16)) end))
end

function init(args)
  local file = args[1]
  local path = args[2] or "/ocsp"
  if file == nil then
    error("usage: wrk ... -s ocsp_mix.lua URL -- REQUESTS.hex [PATH]")
  end
  local headers = { ["Content-Type"] = "application/ocsp-request" }
  for line in io.lines(file) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", path, headers, unhex(line))
    end
  end
  if #requests == 0 then
    error("no requests in " .. file)
  end
  -- Threads are created one after another: math.random differs enough between them once
  -- seeded with the clock and the table address.
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

-- wrk script: POSTs the completion request in $COBATCH_BENCH_BODY on every
-- connection, counts the completion tokens of each 200 answer, and prints
-- one "COBATCH ..." line that bench/server/server_bench.py reads.
wrk.method = "POST"
wrk.body = os.getenv("COBATCH_BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  tokens = 0
  errors = 0
  overloaded = 0
end

function response(status, headers, body)
  if status == 200 then
    local n = body:match('"completion_tokens":(%d+)')
    if n then
      tokens = tokens + tonumber(n)
    else
      errors = errors + 1
    end
  elseif status == 503 then
    overloaded = overloaded + 1
  else
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local t, e, o = 0, 0, 0
  for _, thread in ipairs(threads) do
    t = t + thread:get("tokens")
    e = e + thread:get("errors")
    o = o + thread:get("overloaded")
  end
  local socket_errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("COBATCH tokens=%d errors=%d overloaded=%d socket_errors=%d requests=%d duration_us=%d\n",
                         t, e, o, socket_errors, summary.requests, summary.duration))
end

-- wrk script: POST JSON bodies in rotation and print a machine-readable summary.
--
--   wrk -t1 -c8 -d20s --timeout 120s -s bench/wrk/post.lua http://127.0.0.1:8080/predict -- BODIES
--
-- BODIES is a file with one complete JSON request body per line (bench/run.py writes it).
-- Each wrk thread starts at a different offset in the rotation. done() prints one line,
-- "BENCH_JSON {...}", with the request count, duration, error counts and latency
-- percentiles (microseconds) taken from wrk's own histogram.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

local requests_ = {}
local counter = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("post.lua: pass the bodies file after --")
   end
   for line in io.lines(path) do
      if #line > 0 then
         requests_[#requests_ + 1] = wrk.format(nil, nil, nil, line)
      end
   end
   if #requests_ == 0 then
      error("post.lua: no request bodies in " .. path)
   end
   counter = (tid or 0) % #requests_
end

function request()
   counter = counter % #requests_ + 1
   return requests_[counter]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end

-- wrk script: POST multipart/form-data uploads in rotation and print a machine-readable summary.
--
--   wrk -t1 -c8 -d20s --timeout 120s -s bench/wrk/upload.lua http://127.0.0.1:8080/predict -- LIST
--
-- LIST is a file naming one pre-built request body per line (bench/images.py writes them):
-- each body is a complete multipart/form-data payload, one `file` part holding a JPEG,
-- starting with its boundary line ("--BOUNDARY\r\n"), from which the Content-Type header's
-- boundary is taken. The requests are formatted once, in init(); each wrk thread starts at a
-- different offset in the rotation. done() prints one line, "BENCH_JSON {...}", with the
-- request count, duration, error counts and latency percentiles (microseconds) taken from
-- wrk's own histogram, exactly as post.lua does.

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

local requests_ = {}
local counter = 0

local function read_all(path)
   local f = io.open(path, "rb")
   if f == nil then
      error("upload.lua: cannot open " .. path)
   end
   local data = f:read("*a")
   f:close()
   return data
end

function init(args)
   local list = args[1]
   if list == nil then
      error("upload.lua: pass the file listing the request bodies after --")
   end
   for path in io.lines(list) do
      if #path > 0 then
         local body = read_all(path)
         local boundary = body:match("^%-%-([^\r\n]+)\r\n")
         if boundary == nil then
            error("upload.lua: " .. path .. " does not start with a multipart boundary line")
         end
         local headers = {["Content-Type"] = "multipart/form-data; boundary=" .. boundary}
         requests_[#requests_ + 1] = wrk.format("POST", nil, headers, body)
      end
   end
   if #requests_ == 0 then
      error("upload.lua: no request bodies listed in " .. list)
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

-- keygate benchmark request stream (wrk): GET /v1/resource, each request carrying one of the
-- 1,000 load keys in wrk_keys.txt, in an order shuffled per thread so the two wrk threads
-- do not walk the keys in step. Every proxy gets exactly this stream. At the end it prints
-- one "RESULT k=v ..." line that bench/run.sh turns into a results.tsv row.
-- @WORKDIR@ is bench/work/; bench/run.sh makes variants of this file by substitution (the
-- path, the keys file, a Connection header), so keep those strings as they are.
local requests = {}
local next_request = 0
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_no", thread_count)
end

function init(args)
   local keys = {}
   for line in io.lines("@WORKDIR@/wrk_keys.txt") do
      if line ~= "" then
         keys[#keys + 1] = line
      end
   end
   -- A fixed seed per thread: the same order on every run and for every proxy.
   math.randomseed(4242 + (thread_no or 0))
   for i = #keys, 2, -1 do
      local j = math.random(i)
      keys[i], keys[j] = keys[j], keys[i]
   end
   local headers = { ["Host"] = "127.0.0.1" }
   -- @EXTRA_HEADERS@
   for i, key in ipairs(keys) do
      headers["x-api-key"] = key
      requests[i] = wrk.format("GET", "/v1/resource", headers)
   end
end

function request()
   next_request = next_request % #requests + 1
   return requests[next_request]
end

function done(summary, latency, _)
   local errors = summary.errors
   io.write(string.format(
      "RESULT rps=%.1f requests=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f"
         .. " non2xx3xx=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
      summary.requests / (summary.duration / 1e6), summary.requests,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean,
      errors.status, errors.connect, errors.read, errors.write, errors.timeout))
end

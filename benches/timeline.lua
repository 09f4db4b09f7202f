-- A wrk script for finding slow stretches in a run: the cost bench's
-- requests (1000 client ids, every eighth to /capped), and the number of
-- responses in each 100 ms of wall-clock time, appended as
-- "<tenths of a second since the epoch> <responses>" lines to the file
-- $TIMELINE (default timeline.txt). A stretch with few responses is one
-- where requests waited; its time can be set beside the gateway's log.
--
--   TIMELINE=/tmp/tl.txt wrk -t1 -c64 -d10s --latency -s benches/timeline.lua http://127.0.0.1:PORT/
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } fg_timespec;
  int clock_gettime(int, fg_timespec *);
]]
local ts = ffi.new("fg_timespec")
local function tenth()
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) * 10 + math.floor(tonumber(ts.tv_nsec) / 100000000)
end

local path = os.getenv("TIMELINE") or "timeline.txt"
local current, responses, out = nil, 0, nil

-- The requests: benches/clients.lua, beside this script.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "clients.lua")

response = function(status, headers, body)
  local t = tenth()
  if t ~= current then
    if current then
      out = out or io.open(path, "a")
      out:write(current, " ", responses, "\n")
      out:flush()
    end
    current, responses = t, 0
  end
  responses = responses + 1
end

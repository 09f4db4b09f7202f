-- The cost bench's requests for wrk: 1 000 client ids in turn, every
-- eighth request to /capped (the upstream with a connection cap).
--
--   wrk -t1 -c64 -d10s -s benches/clients.lua http://127.0.0.1:PORT/
local counter = 0

request = function()
  counter = counter + 1
  local target = "/"
  if counter % 8 == 0 then target = "/capped" end
  return wrk.format("GET", target, { ["X-Client-ID"] = "c" .. (counter % 1000) })
end

-- wrk script: /verify with a session cookie from TOKENS (one per line), as a proxy would
-- call it: chosen at random, or in file order (cycling) when SEQUENTIAL is set — the
-- benchmark's warm-up uses that to visit every session of the working set once.
-- Every request is built once, in init(), and each line's request is distinct (its
-- X-Forwarded-Uri carries the line number): request() then allocates nothing, so the
-- load generator's own cost per request is the same whether TOKENS holds 100,000
-- distinct sessions or 1,000 sessions repeated 100 times (the scale rows compare those).
local requests = {}
local n = 0
local sequential = os.getenv("SEQUENTIAL") ~= nil
local next_index = 0
function init(args)
  local path = os.getenv("VERIFY_PATH") or "/verify"
  for line in io.lines(os.getenv("TOKENS")) do
    n = n + 1
    requests[n] = wrk.format("GET", path, {
      ["Cookie"] = "session_id=" .. line,
      ["X-Forwarded-Proto"] = "https",
      ["X-Forwarded-Host"] = "app.example.com",
      ["X-Forwarded-Uri"] = "/page/" .. n,
    })
  end
  math.randomseed(os.time() + (args[1] and tonumber(args[1]) or 0))
end
function request()
  if sequential then
    next_index = next_index % n + 1
    return requests[next_index]
  end
  return requests[math.random(n)]
end

-- wrk script: /verify with a session cookie from TOKENS (one per line), as a proxy would
-- call it: chosen at random, or in file order (cycling) when SEQUENTIAL is set — the
-- benchmark's warm-up uses that to visit every session of the working set once.
local tokens = {}
local sequential = os.getenv("SEQUENTIAL") ~= nil
local next_index = 0
function init(args)
  for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
  math.randomseed(os.time() + (args[1] and tonumber(args[1]) or 0))
end
function request()
  local t
  if sequential then
    next_index = next_index % #tokens + 1
    t = tokens[next_index]
  else
    t = tokens[math.random(#tokens)]
  end
  return wrk.format("GET", os.getenv("VERIFY_PATH") or "/verify", {
    ["Cookie"] = "session_id=" .. t,
    ["X-Forwarded-Proto"] = "https",
    ["X-Forwarded-Host"] = "app.example.com",
    ["X-Forwarded-Uri"] = "/page",
  })
end

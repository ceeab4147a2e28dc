-- wrk script: /verify with a session cookie chosen at random from TOKENS (one per line),
-- as a proxy would call it.
local tokens = {}
function init(args)
  for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
  math.randomseed(os.time() + (args[1] and tonumber(args[1]) or 0))
end
function request()
  local t = tokens[math.random(#tokens)]
  return wrk.format("GET", os.getenv("VERIFY_PATH") or "/verify", {
    ["Cookie"] = "session_id=" .. t,
    ["X-Forwarded-Proto"] = "https",
    ["X-Forwarded-Host"] = "app.example.com",
    ["X-Forwarded-Uri"] = "/page",
  })
end

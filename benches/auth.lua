-- wrk script: POST /auth with a distinct address on every request.
local n = 0
local id = tostring(math.random(1, 1e9))
function init(args)
  math.randomseed(os.time())
  id = tostring(math.random(1, 1e9))
end
function request()
  n = n + 1
  return wrk.format("POST", "/auth",
    { ["Content-Type"] = "application/x-www-form-urlencoded" },
    "email=bench-" .. id .. "-" .. n .. "%40example.com")
end

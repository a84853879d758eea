-- wrk script: a small chat completion, non-streaming (or streaming when WRK_STREAM=1).
--   CLEX_KEY=clex_... wrk -t1 -c64 -d10s -s benchmarks/wrk/chat.lua http://127.0.0.1:8080
-- CLEX_KEYS_FILE=path spreads requests over many keys (one per line), chosen per request; every key's
-- request is formatted once, up front, so the load generator does no formatting while it runs.
-- CLEX_MODEL overrides the model. WRK_API=responses or messages sends the same question as an OpenAI
-- Responses or an Anthropic Messages body (the Messages one with x-api-key and anthropic-version, as
-- Anthropic's SDKs send it); WRK_PATH must then name that endpoint.
local key = os.getenv("CLEX_KEY") or "x"
local model = os.getenv("CLEX_MODEL") or "meta/llama-3.1-8b-instruct"
local stream = os.getenv("WRK_STREAM") == "1"
local api = os.getenv("WRK_API") or "chat"
local bodies = {
  chat = '{"model":"%s","stream":%s,"messages":[{"role":"user","content":"Say hello in five words."}]}',
  responses = '{"model":"%s","stream":%s,"input":"Say hello in five words."}',
  messages = '{"model":"%s","stream":%s,"max_tokens":64,' ..
    '"messages":[{"role":"user","content":"Say hello in five words."}]}',
}
assert(bodies[api], "WRK_API must be chat, responses or messages")
local body = string.format(bodies[api], model, stream and "true" or "false")

local keys = nil
local keys_file = os.getenv("CLEX_KEYS_FILE")
if keys_file then
  keys = {}
  for line in io.lines(keys_file) do
    if #line > 0 then keys[#keys + 1] = line end
  end
end

local path = os.getenv("WRK_PATH") or "/v1/chat/completions"
local fixed = nil
local prebuilt = nil

-- WRK_HEADERS: extra "Name: value" lines (a peer gateway's routing headers).
local extra = {}
for line in (os.getenv("WRK_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then extra[name] = value end
end

local function headers(k)
  local h = {["Authorization"] = "Bearer " .. k, ["Content-Type"] = "application/json"}
  if api == "messages" then
    h = {["x-api-key"] = k, ["anthropic-version"] = "2023-06-01", ["Content-Type"] = "application/json"}
  end
  for name, value in pairs(extra) do h[name] = value end
  return h
end

function init(args)
  math.randomseed(os.time() + (args[1] and tonumber(args[1]) or 0))
  if not keys then
    fixed = wrk.format("POST", path, headers(key), body)
  else
    prebuilt = {}
    for i, k in ipairs(keys) do prebuilt[i] = wrk.format("POST", path, headers(k), body) end
  end
end

function request()
  if fixed then return fixed end
  return prebuilt[math.random(#prebuilt)]
end

-- No response() callback: it would make wrk parse every answer in Lua and slow the load generator.
-- Non-2xx answers still show up in the summary (errors.status: wrk counts every status above 399), so a run of
-- errors cannot pass for a fast one; benchmarks/bench.py also checks one answer's body per target before timing.
function done(summary, latency, requests)
  io.write(string.format("WRK_JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%d,\"p99_us\":%d," ..
    "\"errors\":%d,\"non2xx\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

-- loreley.lab.policy: loads a policy file the way the host does (src/host.c), so the lab
-- runs exactly what `loreley-host POLICY.lua` would.
--
--   local policy = require "loreley.lab.policy"
--   local p = policy.load(path) -> {tick, init?, shutdown?, path, version} | nil, message
--
-- The file is read whole, its version is the first 12 hex digits of its SHA-256, a "#!"
-- first line is skipped (line numbers kept), it is compiled with the chunk name
-- "@path" and run with its directory first on package.path; it must return a table whose only keys are tick (a function,
-- required), init and shutdown (functions). The messages are the host's.
local host = require "loreley.host"

local M = {}

local KEYS = { tick = true, init = true, shutdown = true }

function M.load(path)
  local f, ferr = io.open(path, "rb")
  if not f then return nil, ("cannot open %s: %s"):format(path, tostring(ferr):gsub("^[^:]*: ", "")) end
  local source = f:read("*a")
  f:close()
  local version = host.sha256(source):sub(1, 12)
  local text = source
  if text:sub(1, 2) == "#!" then text = text:gsub("^[^\n]*", "") end
  local chunk, err = loadstring(text, "@" .. path)
  if not chunk then return nil, tostring(err) end
  -- As the host does, the policy's directory comes first on package.path, so it can
  -- require the files beside it.
  local saved = package.path
  package.path = (path:match("^(.*/)[^/]*$") or "./") .. "?.lua;" .. saved
  local ok, value = xpcall(chunk, debug.traceback)
  package.path = saved
  if not ok then return nil, tostring(value) end
  if type(value) ~= "table" then
    return nil, ("%s: a policy must return a table with a tick function, got %s")
      :format(path, type(value))
  end
  for key in pairs(value) do
    if type(key) ~= "string" then
      return nil, ("%s: the policy table has a non-string key (%s); allowed keys: tick, init, "
        .. "shutdown"):format(path, type(key))
    end
    if not KEYS[key] then
      return nil, ("%s: unknown key '%s' in the policy table (allowed: tick, init, shutdown)")
        :format(path, key)
    end
  end
  if value.tick == nil then return nil, ("%s: the policy table has no 'tick' function"):format(path) end
  for _, key in ipairs { "tick", "init", "shutdown" } do
    if value[key] ~= nil and type(value[key]) ~= "function" then
      return nil, ("%s: policy '%s' must be a function, got %s"):format(path, key, type(value[key]))
    end
  end
  return { tick = value.tick, init = value.init, shutdown = value.shutdown, path = path,
    version = version }
end

return M

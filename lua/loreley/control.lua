-- loreley.control: the HTTP control plane's requests, applied on the host's main thread
-- between ticks (loreley.monitor takes them from the server and calls serve). The
-- server has already checked the bearer token; everything about the body is checked
-- here, completely, before anything changes: a refused request changes nothing.
--
--   control.ENDPOINTS                  {"pause", "resume", "limits", "reload"}
--   control.LIMITS                     the limits a client may override (key, field, min, max)
--   local st = control.new(ctx)
--   control.serve(ctx, st, server) -> answers   applies every queued request; answers is
--                                        { {id, status, body}, ... } for server:reply,
--                                        sent by the caller once the snapshot shows the
--                                        change (a reload is answered by after_reload)
--   control.after_reload(ctx, st) -> answers   records a reload; answers its requests
--   control.flush(ctx, st) -> bool      writes unsaved changes to loreley_control_log
--   control.describe(ctx, st) -> table  the state GET /api/control shows
--
-- What each endpoint does (POST, JSON body, "Authorization: Bearer <token>"):
--   pause   {"reason": "..."}?   ctx.paused = true: stages.schedule and stages.dispatch
--                                create and send nothing; ingestion and recovery go on
--   resume  {}                   ctx.paused = false
--   limits  {"schedule_batch_size": n, "dispatch_batch_size": n, "ingest_batch_size": n,
--            "max_unfinished_jobs": n}   any subset, at least one; null restores the
--                                setting; overrides ctx.settings for this process only
--   reload  {}                   reloads the policy file (as SIGHUP); answered with the
--                                result: 200 and the new version, or 409 (running policy kept)
-- Answers: 200 {"ok": true, "changed": bool, "recorded": bool, "control": {...}};
-- 400 {"error": "..."} for a malformed body. Every change is logged, kept in memory (the
-- last 100) and written to loreley_control_log once the database is connected.
local host = require "loreley.host"
local json = require "loreley.json"

local M = {}

M.ENDPOINTS = { "pause", "resume", "limits", "reload" }

M.LIMITS = {
  { key = "schedule_batch_size", field = "scheduler_schedule_batch_size", min = 1, max = 10000 },
  { key = "dispatch_batch_size", field = "scheduler_dispatch_batch_size", min = 0, max = 10000 },
  { key = "ingest_batch_size", field = "scheduler_ingest_batch_size", min = 0, max = 10000 },
  { key = "max_unfinished_jobs", field = "scheduler_max_unfinished_jobs", min = 0, max = 1000000 },
}
local LIMIT_BY_KEY = {}
for _, l in ipairs(M.LIMITS) do LIMIT_BY_KEY[l.key] = l end

local KEEP_CHANGES = 100
local MAX_REASON = 200

function M.new(ctx)
  return {
    seq = 0,
    changes = {},          -- newest last, at most KEEP_CHANGES
    unsaved = {},          -- changes not yet in loreley_control_log
    original = {},         -- field -> the setting's value before the first override
    overrides = {},        -- key -> value
    pending_reloads = {},  -- taken reload requests waiting for the host's attempt
    seen_reloads = ctx.reloads or 0,
    seen_reload_failures = ctx.reload_failures or 0,
    version = ctx.policy_version,   -- the policy version before the next reload
    save_failing = false,
  }
end

-- --- recording ----------------------------------------------------------------------------

local function record(ctx, st, action, detail, req)
  st.seq = st.seq + 1
  local entry = { seq = st.seq, at = host.time(), action = action, detail = detail,
    source = req and "http" or "signal", remote = req and req.remote or nil,
    policy_version = ctx.policy_version }
  st.changes[#st.changes + 1] = entry
  if #st.changes > KEEP_CHANGES then table.remove(st.changes, 1) end
  st.unsaved[#st.unsaved + 1] = entry
  if #st.unsaved > 10 * KEEP_CHANGES then table.remove(st.unsaved, 1) end
  host.info("control: %s %s (%s%s)", action, json.encode(detail, { sort_keys = true }),
    entry.source, entry.remote and (" from " .. entry.remote) or "")
  return entry
end

local SQL_INSERT = [[
INSERT INTO loreley_control_log (experiment_id, at, action, source, remote, detail,
  policy_version)
VALUES ($1, to_timestamp($2), $3, $4, $5, $6::jsonb, $7)]]

-- Writes the unsaved changes when the scheduler's database connection exists. Returns
-- true when nothing is left unsaved.
function M.flush(ctx, st)
  if #st.unsaved == 0 then return true end
  local s = ctx.loreley
  if not (s and s.conn and s.experiment) then return false end
  while #st.unsaved > 0 do
    local e = st.unsaved[1]
    local ok, err = s.conn:exec(SQL_INSERT, s.experiment.id, e.at, e.action, e.source, e.remote,
      json.encode(e.detail), e.policy_version)
    if not ok then
      if not st.save_failing then
        host.warn("control: cannot record change %d in loreley_control_log (kept in memory; "
          .. "retried after the next tick): %s", e.seq, tostring(err))
      end
      st.save_failing = true
      return false
    end
    table.remove(st.unsaved, 1)
  end
  st.save_failing = false
  return true
end

-- --- the state ----------------------------------------------------------------------------

function M.describe(ctx, st)
  local effective, defaults, limits = {}, {}, {}
  for _, l in ipairs(M.LIMITS) do
    effective[l.key] = ctx.settings[l.field]
    local original = st.original[l.field]
    if original == nil then original = ctx.settings[l.field] end
    defaults[l.key] = original
    limits[l.key] = { min = l.min, max = l.max }
  end
  local overrides = {}
  for k, v in pairs(st.overrides) do overrides[k] = v end
  local changes = json.array()
  for i = #st.changes, math.max(1, #st.changes - 49), -1 do
    changes[#changes + 1] = st.changes[i]
  end
  return {
    enabled = (ctx.settings.loreley_http_token or "") ~= "",
    paused = ctx.paused == true,
    pause_reason = ctx.paused and st.pause_reason or json.null,
    paused_at = ctx.paused and st.paused_at or json.null,
    overrides = overrides,
    effective = effective,
    settings = defaults,
    limits = limits,
    changes = changes,
    changes_total = st.seq,
    unsaved_changes = #st.unsaved,
  }
end

-- --- requests -------------------------------------------------------------------------------

-- A refusal: handlers raise this table, serve answers it.
local function refuse(status, fmt, ...)
  error({ status = status, message = fmt:format(...) }, 0)
end

-- The body as a table: empty means {}; anything but a JSON object is refused.
local function parse_body(req)
  local text = req.body or ""
  if text:match("^%s*$") then return {} end
  local v, err = json.decode(text)
  if v == nil then refuse(400, "the body is not valid JSON: %s", tostring(err)) end
  if type(v) ~= "table" or json.is_array(v) then
    refuse(400, "the body must be a JSON object, e.g. {}")
  end
  return v
end

local function check_keys(body, allowed, endpoint)
  local names = {}
  for _, k in ipairs(allowed) do names[k] = true end
  for k in pairs(body) do
    if not names[k] then
      refuse(400, "unknown key %q in the body of /api/control/%s (allowed: %s)", tostring(k),
        endpoint, #allowed > 0 and table.concat(allowed, ", ") or "none")
    end
  end
end

local function answer(ctx, st, changed)
  local recorded = M.flush(ctx, st)
  return 200, { ok = true, changed = changed, recorded = changed and recorded or false,
    control = M.describe(ctx, st) }
end

local handlers = {}

function handlers.pause(ctx, st, req)
  local body = parse_body(req)
  check_keys(body, { "reason" }, "pause")
  local reason = body.reason
  if reason == json.null then reason = nil end
  if reason ~= nil and (type(reason) ~= "string" or #reason > MAX_REASON) then
    refuse(400, "reason must be a string of at most %d bytes", MAX_REASON)
  end
  if ctx.paused then return answer(ctx, st, false) end
  ctx.paused = true
  st.pause_reason = reason
  st.paused_at = host.time()
  record(ctx, st, "pause", { reason = reason }, req)
  return answer(ctx, st, true)
end

function handlers.resume(ctx, st, req)
  local body = parse_body(req)
  check_keys(body, {}, "resume")
  if not ctx.paused then return answer(ctx, st, false) end
  ctx.paused = false
  local paused_for = st.paused_at and host.time() - st.paused_at or nil
  st.pause_reason, st.paused_at = nil, nil
  record(ctx, st, "resume", { paused_seconds = paused_for }, req)
  return answer(ctx, st, true)
end

local function is_integer(v)
  return type(v) == "number" and v == math.floor(v) and math.abs(v) < 2 ^ 53
end

function handlers.limits(ctx, st, req)
  local body = parse_body(req)
  local allowed = {}
  for i, l in ipairs(M.LIMITS) do allowed[i] = l.key end
  check_keys(body, allowed, "limits")
  if next(body) == nil then
    refuse(400, "the body names no limit (allowed: %s)", table.concat(allowed, ", "))
  end
  -- Every value is checked before any is applied.
  local wanted = {}
  for _, l in ipairs(M.LIMITS) do
    local v = body[l.key]
    if v == json.null then
      wanted[#wanted + 1] = { limit = l, restore = true }
    elseif v ~= nil then
      if not is_integer(v) or v < l.min or v > l.max then
        refuse(400, "%s must be an integer from %d to %d (or null for the setting), got %s",
          l.key, l.min, l.max, json.encode(v))
      end
      wanted[#wanted + 1] = { limit = l, value = v }
    end
  end
  local detail, changed = {}, false
  for _, w in ipairs(wanted) do
    local l = w.limit
    local before = ctx.settings[l.field]
    if st.original[l.field] == nil then st.original[l.field] = before end
    local after = w.restore and st.original[l.field] or w.value
    st.overrides[l.key] = not w.restore and after or nil
    if after ~= before then
      ctx.settings[l.field] = after
      detail[l.key] = { from = before, to = after }
      changed = true
    end
  end
  if changed then record(ctx, st, "limits", detail, req) end
  return answer(ctx, st, changed)
end

function handlers.reload(ctx, st, req)
  local body = parse_body(req)
  check_keys(body, {}, "reload")
  st.pending_reloads[#st.pending_reloads + 1] = { id = req.id, remote = req.remote,
    from_version = ctx.policy_version }
  host.request_reload()
  return nil   -- answered by after_reload, once the host has tried
end

local function encode(v)
  return json.encode(v, { nonfinite = "null" }) .. "\n"
end

-- Applies every queued request. Returns the answers to send.
function M.serve(ctx, st, server)
  local answers = {}
  local requests = server:take()
  for _, req in ipairs(requests) do
    local handler = handlers[req.endpoint]
    local ok, status, body = pcall(function()
      if not handler then refuse(404, "unknown control endpoint %s", req.endpoint) end
      return handler(ctx, st, req)
    end)
    if not ok then
      local err = status
      if type(err) == "table" and err.status then
        status, body = err.status, { error = err.message }
        host.warn("control: refused /api/control/%s from %s: %s", req.endpoint, req.remote,
          err.message)
      else
        status, body = 500, { error = "internal error: " .. tostring(err):match("^[^\n]*") }
        host.error("control: /api/control/%s failed: %s", req.endpoint, tostring(err))
      end
    end
    if status ~= nil then answers[#answers + 1] = { req.id, status, encode(body) } end
  end
  return answers
end

-- After the host tried a reload (SIGHUP or the control plane): record it and answer the
-- reload requests waiting for it.
function M.after_reload(ctx, st)
  local answers = {}
  local reloads, failures = ctx.reloads or 0, ctx.reload_failures or 0
  if reloads == st.seen_reloads and failures == st.seen_reload_failures then return answers end
  local succeeded = reloads > st.seen_reloads
  st.seen_reloads, st.seen_reload_failures = reloads, failures
  local pending = st.pending_reloads
  st.pending_reloads = {}
  local first = pending[1]
  local detail = { result = succeeded and "ok" or "failed", version = ctx.policy_version,
    previous_version = st.version }
  st.version = ctx.policy_version
  record(ctx, st, "reload", detail, first)
  local recorded = M.flush(ctx, st)
  for _, p in ipairs(pending) do
    if succeeded then
      answers[#answers + 1] = { p.id, 200, encode { ok = true,
        changed = ctx.policy_version ~= p.from_version, recorded = recorded,
        reloaded = true, version = ctx.policy_version, previous_version = p.from_version } }
    else
      answers[#answers + 1] = { p.id, 409, encode { error = ("the policy file failed to load "
        .. "(see the host log); the running policy (version %s) is kept")
        :format(ctx.policy_version), version = ctx.policy_version } }
    end
  end
  return answers
end

return M

-- loreley.strict: the global guard installed after a policy has loaded.
-- Reading or assigning a global that does not exist raises, naming it, so a typo in a
-- policy fails loudly on the tick that reaches it instead of reading nil for a week.
local M = {}

local guard_mt = {
  __index = function(_, name)
    error(("undeclared global '%s'"):format(tostring(name)), 2)
  end,
  __newindex = function(_, name)
    error(("assignment to undeclared global '%s' (declare it local, or keep state in ctx)")
      :format(tostring(name)), 2)
  end,
}

function M.guard()
  setmetatable(_G, guard_mt)
end

function M.unguard()
  if getmetatable(_G) == guard_mt then setmetatable(_G, nil) end
end

return M

-- A minimal policy: it shows the shape every policy has. Run it with
--   loreley-host --once examples/hello.lua
local host = require "loreley.host"

return {
  init = function(ctx)
    ctx.state = { greetings = 0 }
  end,
  tick = function(ctx)
    local n = ctx:stage("greet", function(c)
      c.state.greetings = c.state.greetings + 1
      return c.state.greetings
    end)
    ctx:summary { greeted = n }
  end,
  shutdown = function(ctx)
    host.info("said hello %d time(s)", ctx.state.greetings)
  end,
}

-- A small smart-HTTP git server for the tests: HTTP Basic authentication in front of
-- `git http-backend` (git's own CGI program), on a loopback port. Run it as
--   loreley-host --once tests/lua/support/git_http_server.lua -- PORT ROOT USER PASSWORD READY_FILE
-- It serves one connection at a time (Connection: close), logs one line per request to
-- stdout, writes READY_FILE once listening, and stops on SIGTERM or after 120 s.
local ffi = require "ffi"
local sys = require "loreley.sys"
local host = require "loreley.host"

local port, root, user, password, ready_file = tonumber(arg[1]), arg[2], arg[3], arg[4], arg[5]
assert(port and root and user and password and ready_file, "usage: PORT ROOT USER PASSWORD READY_FILE")

ffi.cdef [[
  int socket(int domain, int type, int protocol);
  int setsockopt(int fd, int level, int name, const void *value, unsigned int len);
  int bind(int fd, const void *addr, unsigned int len);
  int listen(int fd, int backlog);
  int accept(int fd, void *addr, void *len);
  long recv(int fd, void *buf, unsigned long len, int flags);
  long send(int fd, const void *buf, unsigned long len, int flags);
  int close(int fd);
  struct loreley_pollfd { int fd; short events; short revents; };
  int poll(struct loreley_pollfd *fds, unsigned long n, int timeout);
]]
local C = ffi.C

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 3, 0, -1 do
      local v = math.floor(n / 64 ^ k) % 64
      chars[#chars + 1] = B64:sub(v + 1, v + 1)
    end
    if not b then chars[3], chars[4] = "=", "=" elseif not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end
local expected_auth = "Basic " .. base64(user .. ":" .. password)

local listener = C.socket(2, 1, 0)
assert(listener >= 0, "socket")
local one = ffi.new("int[1]", 1)
C.setsockopt(listener, 1, 2, one, 4)   -- SOL_SOCKET, SO_REUSEADDR
local addr = ffi.new("uint8_t[16]")
addr[0], addr[2], addr[3] = 2, math.floor(port / 256), port % 256
addr[4], addr[7] = 127, 1
assert(C.bind(listener, addr, 16) == 0, "bind")
assert(C.listen(listener, 16) == 0, "listen")
local f = assert(io.open(ready_file, "w"))
f:write("ready\n")
f:close()

local buf = ffi.new("uint8_t[65536]")

-- Reads from fd until fn(data) says it has enough; returns the data (nil on EOF first).
local function read_until(fd, data, enough)
  while not enough(data) do
    local n = C.recv(fd, buf, 65536, 0)
    if n <= 0 then return nil end
    data = data .. ffi.string(buf, n)
  end
  return data
end

local function send_all(fd, s)
  local sent = 0
  while sent < #s do
    local n = C.send(fd, ffi.cast("const char *", s) + sent, #s - sent, 0)
    if n <= 0 then return end
    sent = sent + tonumber(n)
  end
end

local function serve(fd)
  local data = read_until(fd, "", function(d) return d:find("\r\n\r\n", 1, true) end)
  if not data then return end
  local head_end = data:find("\r\n\r\n", 1, true)
  local head, rest = data:sub(1, head_end - 1), data:sub(head_end + 4)
  local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d")
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[name:lower()] = value end
  local body = ""
  if headers["content-length"] then
    local n = tonumber(headers["content-length"])
    rest = read_until(fd, rest, function(d) return #d >= n end) or rest
    body = rest:sub(1, n)
  elseif (headers["transfer-encoding"] or ""):lower() == "chunked" then
    local parts = {}
    while true do
      rest = read_until(fd, rest, function(d) return d:find("\r\n", 1, true) end)
      if not rest then break end
      local line_end = rest:find("\r\n", 1, true)
      local size = tonumber(rest:sub(1, line_end - 1):match("^%x+"), 16) or 0
      rest = rest:sub(line_end + 2)
      if size == 0 then break end
      rest = read_until(fd, rest, function(d) return #d >= size + 2 end) or ""
      parts[#parts + 1] = rest:sub(1, size)
      rest = rest:sub(size + 3)
    end
    body = table.concat(parts)
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  local authorized = headers["authorization"] == expected_auth
  io.write(("%s %s auth=%s\n"):format(method, path, authorized and "ok" or
    (headers["authorization"] and "wrong" or "none")))
  io.flush()
  if not authorized then
    send_all(fd, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"loreley-test\"\r\n" ..
      "Content-Length: 0\r\nConnection: close\r\n\r\n")
    return
  end
  local r = sys.run({ "git", "http-backend" }, {
    input = body, timeout = 30,
    env = {
      GIT_PROJECT_ROOT = root, GIT_HTTP_EXPORT_ALL = "1", REQUEST_METHOD = method,
      PATH_INFO = path, QUERY_STRING = query, CONTENT_TYPE = headers["content-type"] or "",
      CONTENT_LENGTH = tostring(#body), REMOTE_USER = user, REMOTE_ADDR = "127.0.0.1",
      GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1",
    },
  })
  local out = r and r.stdout or ""
  local split = out:find("\r\n\r\n", 1, true)
  local sep = 4
  if not split then split, sep = out:find("\n\n", 1, true), 2 end
  local cgi_head, cgi_body = split and out:sub(1, split - 1) or "", split and out:sub(split + sep) or out
  local status = "200 OK"
  local lines = {}
  for line in cgi_head:gmatch("[^\r\n]+") do
    local s = line:match("^Status:%s*(.*)$")
    if s then status = s else lines[#lines + 1] = line end
  end
  send_all(fd, ("HTTP/1.1 %s\r\n%s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"):format(
    status, table.concat(lines, "\r\n"), #cgi_body) .. cgi_body)
end

local deadline = host.now() + 120
local pfd = ffi.new("struct loreley_pollfd[1]")
while not host.stop_requested() and host.now() < deadline do
  pfd[0].fd, pfd[0].events, pfd[0].revents = listener, 1, 0   -- POLLIN
  if C.poll(pfd, 1, 200) > 0 then
    local fd = C.accept(listener, nil, nil)
    if fd >= 0 then
      serve(fd)
      C.close(fd)
    end
  end
end
C.close(listener)

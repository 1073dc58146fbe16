-- A small HTTP/1.1 client for the tests and the HTTP benchmark, on LuaJIT's FFI and the
-- plain socket calls (IPv4 loopback). One request per connection (Connection: close).
--
--   local client = require "support.http_client"
--   client.request{port=, method="GET", path="/", headers={...}, body=nil, timeout=10,
--                  host_header="127.0.0.1:PORT"} -> {status, headers = {name = value}, body}
--                                                   | nil, message
--   client.get(port, path[, headers]) / client.post(port, path, body[, token[, headers]])
--   local c = client.connect(port) -> c | nil, message   (a raw connection)
--   c:send(text) -> bool    c:recv([timeout]) -> data | "" (closed) | nil (timeout)
--   c:read_response([timeout]) -> response | nil, message    c:close()
-- Header names in responses are lower-cased.
local ffi = require "ffi"
local host = require "loreley.host"

ffi.cdef [[
  int socket(int domain, int type, int protocol);
  int connect(int fd, const void *addr, unsigned int len);
  long recv(int fd, void *buf, unsigned long len, int flags);
  long send(int fd, const void *buf, unsigned long len, int flags);
  int close(int fd);
  struct loreley_client_pollfd { int fd; short events; short revents; };
  int poll(struct loreley_client_pollfd *fds, unsigned long n, int timeout);
]]
local C = ffi.C
local MSG_NOSIGNAL = 0x4000
local POLLIN = 1

local M = {}

local Conn = {}
Conn.__index = Conn

function M.connect(port)
  local fd = C.socket(2, 1, 0)   -- AF_INET, SOCK_STREAM
  if fd < 0 then return nil, "socket() failed" end
  local addr = ffi.new("uint8_t[16]")
  addr[0], addr[2], addr[3] = 2, math.floor(port / 256), port % 256
  addr[4], addr[7] = 127, 1
  if C.connect(fd, addr, 16) ~= 0 then
    C.close(fd)
    return nil, ("cannot connect to 127.0.0.1:%d (%s)"):format(port, ffi.errno())
  end
  return setmetatable({ fd = fd, buf = ffi.new("uint8_t[65536]"), pending = "" }, Conn)
end

function Conn:send(text)
  local sent = 0
  while sent < #text do
    local n = C.send(self.fd, ffi.cast("const char *", text) + sent, #text - sent, MSG_NOSIGNAL)
    if n <= 0 then return false end
    sent = sent + tonumber(n)
  end
  return true
end

-- Data that arrives within timeout seconds; "" when the peer closed; nil on timeout.
function Conn:recv(timeout)
  local pfd = ffi.new("struct loreley_client_pollfd[1]")
  pfd[0].fd, pfd[0].events = self.fd, POLLIN
  local r = C.poll(pfd, 1, math.floor((timeout or 10) * 1000))
  if r <= 0 then return nil end
  local n = C.recv(self.fd, self.buf, 65536, 0)
  if n <= 0 then return "" end
  return ffi.string(self.buf, n)
end

function Conn:close()
  if self.fd then C.close(self.fd) end
  self.fd = nil
end

-- Reads one response (the server closes the connection, or Content-Length says when it
-- is complete).
function Conn:read_response(timeout)
  local deadline = host.now() + (timeout or 10)
  local data = self.pending
  local head_end, length
  while true do
    if not head_end then
      head_end = data:find("\r\n\r\n", 1, true)
      if head_end then
        length = tonumber(data:sub(1, head_end):lower():match("\ncontent%-length:%s*(%d+)"))
      end
    end
    if head_end and length and #data >= head_end + 3 + length then break end
    local left = deadline - host.now()
    if left <= 0 then return nil, "timed out; got " .. #data .. " bytes" end
    local chunk = self:recv(left)
    if chunk == nil then return nil, "timed out; got " .. #data .. " bytes" end
    if chunk == "" then break end
    data = data .. chunk
  end
  if not head_end then return nil, "connection closed before the headers: " .. data end
  local head = data:sub(1, head_end - 1)
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  if not status then return nil, "not an HTTP response: " .. head:sub(1, 80) end
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[name:lower()] = value end
  local body = data:sub(head_end + 4, length and head_end + 3 + length or nil)
  self.pending = length and data:sub(head_end + 4 + length) or ""
  return { status = status, headers = headers, body = body }
end

local function request_text(opts)
  local method = opts.method or "GET"
  local lines = { ("%s %s HTTP/1.1"):format(method, opts.path or "/") }
  lines[#lines + 1] = "Host: " .. (opts.host_header or ("127.0.0.1:" .. opts.port))
  lines[#lines + 1] = "Connection: close"
  local has_length = false
  for k, v in pairs(opts.headers or {}) do
    lines[#lines + 1] = k .. ": " .. v
    if k:lower() == "content-length" then has_length = true end
  end
  if opts.body and not has_length then lines[#lines + 1] = "Content-Length: " .. #opts.body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or "")
end
M.request_text = request_text

function M.request(opts)
  local c, err = M.connect(opts.port)
  if not c then return nil, err end
  if not c:send(request_text(opts)) then
    c:close()
    return nil, "send failed"
  end
  local r, rerr = c:read_response(opts.timeout)
  c:close()
  return r, rerr
end

function M.get(port, path, headers)
  return M.request { port = port, path = path, headers = headers }
end

function M.post(port, path, body, token, headers)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  if token then h.Authorization = "Bearer " .. token end
  h["Content-Type"] = h["Content-Type"] or "application/json"
  return M.request { port = port, method = "POST", path = path, headers = h, body = body or "" }
end

return M

--[[
  server.lua — your routing logic. lunasip calls the functions you define here.

  * Edit this file, then send SIGHUP to reload it without a restart:
        kill -HUP $(pidof lunasip)
    A file with an error is refused (the error and its line go to the log) and the
    running version keeps serving.
  * SIGUSR1 calls SystemEvents.on_user_reload (reopen your own data, say).
  * The full Lua (LuaJIT) standard library is available; your own modules go in
    lib/ next to this file and are found by require.
  * An error in a handler is logged with its traceback and the request is answered
    500 (the error text never reaches the peer); lunasip keeps running.
  * A handler that takes longer than 100 ms is logged: never block in a handler.

  The request object (SPEC §5.2), the most used parts:
    request.method, request.ruri (a lunasip.Uri; assign a string to change it),
    request.from / request.to (lunasip.NameAddr), request.from_tag, request.to_tag,
    request.call_id, request.cseq, request.max_forwards, request.body,
    request.transport ("udp"...), request.source_ip, request.source_port,
    request:header(name), request:header_all(name), request:set_header(name, value),
    request:insert_header / append_header / delete_header / delete_header_top,
    request:reply(code, reason, headers, body), request:check_max_forwards(n),
    request:is_initial(), request:is_in_dialog(), request:destination_myself().
]]

local lunasip = require "lunasip"
local log = lunasip.log

-- Called once, after every listener is bound and before the first request.
function SystemEvents.on_started()
  log.notice("server.lua loaded: answering OPTIONS; proxying is not configured")
end

-- Called on SIGUSR1.
function SystemEvents.on_user_reload()
  log.notice("user reload requested")
end

-- Called on SIGTERM/SIGINT, before lunasip exits. error is nil on a normal shutdown.
function SystemEvents.on_terminated(error)
  log.notice("lunasip is stopping")
end

-- Called for every new request except CANCEL (handled by the core) and the ACK of a
-- negative answer lunasip gave (absorbed by the core).
function SipEvents.on_request(request)
  -- RFC 3261 §16.3: refuse requests that have travelled too far (483 at 0).
  if not request:check_max_forwards(70) then
    return
  end

  -- An ACK is never answered.
  if request.method == "ACK" then
    return
  end

  -- Keepalive and monitoring probes: answer OPTIONS ourselves.
  if request.method == "OPTIONS" then
    request:reply(200, "OK", { Allow = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER" })
    return
  end

  -- Everything else: this lunasip does not route requests yet. Say so clearly instead
  -- of letting the client retransmit into silence.
  log.info("%s %s from %s:%d answered 503 (no routing configured)",
           request.method, tostring(request.ruri), request.source_ip, request.source_port)
  request:reply(503, "No Routing Configured", { ["Retry-After"] = "300" })
end

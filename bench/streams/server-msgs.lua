-- lunasip bench: the script of the message and handshake parts of bench/stream_bench.py, the
-- UDP OPTIONS part's (bench/sip_bench.py) with MESSAGE answered too: every request answered
-- from Lua, whatever transport it came on.
function SipEvents.on_request(req)
  if req.method == "OPTIONS" or req.method == "MESSAGE" then req:reply(200) else req:reply(503) end
end

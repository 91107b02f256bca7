-- lunasip bench: the routing of bench/kamailio/proxy.cfg in Lua for Kamailio's app_lua (KEMI),
-- loaded by proxy-lua.cfg. bench/sip_bench.py --mode calls fills in @UAS_URI@.
-- Same steps as the native configuration: Max-Forwards, CANCEL matched to its transaction,
-- retransmissions absorbed by tm, in-dialog requests by loose_route(), initial requests
-- record-routed and relayed statefully to the called phone.

local UAS_URI = "@UAS_URI@"

local function relay()
    if KSR.tm.t_relay() < 0 then
        KSR.sl.sl_reply_error()
    end
    KSR.x.exit()
end

function ksr_request_route()
    if KSR.maxfwd.process_maxfwd(10) < 0 then
        KSR.sl.sl_send_reply(483, "Too Many Hops")
        return 1
    end

    if KSR.is_CANCEL() then
        if KSR.tm.t_check_trans() > 0 then
            relay()
        end
        return 1
    end

    -- retransmissions are absorbed by their transaction
    if not KSR.is_ACK() then
        if KSR.tmx.t_precheck_trans() > 0 then
            KSR.tm.t_check_trans()
            return 1
        end
        if KSR.tm.t_check_trans() == 0 then
            return 1
        end
    end

    if KSR.siputils.has_totag() > 0 then
        if KSR.rr.loose_route() > 0 then
            relay()
        end
        if KSR.is_ACK() then
            if KSR.tm.t_check_trans() > 0 then
                relay()
            end
            return 1
        end
        KSR.sl.sl_send_reply(404, "Not here")
        return 1
    end

    KSR.rr.record_route()
    KSR.setdsturi(UAS_URI)
    relay()
    return 1
end

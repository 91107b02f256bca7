-- lunasip.tls (SPEC §5.3): checks on the certificate chains the TLS handshake callbacks
-- receive (a list of PEM strings, leaf first). validate verifies a chain against the
-- trusted CAs of lunasip.conf (tls.ca_file, else the system bundle); sip_identities gives the
-- SIP identities of a certificate as RFC 5922 §7.1 defines them. Both run in C (src/tls.c).
local ffi = require "ffi"
local core = require "lunasip.ffi"
local C = core.C

local type, error, ffi_string = type, error, ffi.string

local ERR_LEN = 256
local errbuf = ffi.new("char[?]", ERR_LEN)
local IDS_CAP = 16384
local idbuf = ffi.new("char[?]", IDS_CAP)

local tls = {}

--- tls.validate(pems) -> true, or false, err ("certificate has expired", "not trusted",
--- "no certificate", "cannot parse certificate 2", "chain too long ...").
function tls.validate(pems)
  if type(pems) ~= "table" then error("tls.validate: pems must be a list of PEM strings", 2) end
  local n = #pems
  for i = 1, n do
    if type(pems[i]) ~= "string" then
      error("tls.validate: pems[" .. i .. "] must be a string, got " .. type(pems[i]), 2)
    end
  end
  if n > core.TLS_MAX_CHAIN then
    return false, "chain too long (more than " .. core.TLS_MAX_CHAIN .. " certificates)"
  end
  -- the strings stay referenced by pems for the call
  local arr = ffi.new("const char *[?]", n + 1)
  local lens = ffi.new("size_t[?]", n + 1)
  for i = 1, n do
    arr[i - 1] = pems[i]
    lens[i - 1] = #pems[i]
  end
  if C.lunasip_tls_validate(arr, lens, n, errbuf, ERR_LEN) == 1 then return true end
  local err = ffi_string(errbuf)
  return false, err ~= "" and err or "not valid"
end

--- tls.sip_identities(pem) -> list of the SIP identities of the certificate (the hosts of
--- its subjectAltName sip: URIs, else its DNS names, else its subject CN), or nil, err when
--- the PEM does not parse.
function tls.sip_identities(pem)
  if type(pem) ~= "string" then error("tls.sip_identities: pem must be a string, got " .. type(pem), 2) end
  local n = C.lunasip_tls_sip_identities(pem, #pem, idbuf, IDS_CAP)
  if n < 0 then return nil, "cannot parse certificate" end
  idbuf[IDS_CAP - 1] = 0 -- whatever C wrote, the last string ends inside the buffer
  local out, p, stop = {}, idbuf, idbuf + IDS_CAP
  for i = 1, n do
    if p >= stop then break end
    local s = ffi_string(p)
    out[i] = s
    p = p + #s + 1
  end
  return out
end

return tls

-- lunasip.tls (lua/lunasip/tls.lua, SPEC §5.3): validate(pems) and sip_identities(pem) on the
-- test certificates of t/data/tls (see its README for what each one is). validate runs
-- first with no TLS context (lunasip without tls: everything is untrusted), then with the
-- context the core would build from a lunasip.conf trusting t/data/tls/ca.crt.
local ffi = require "ffi"
local lunasip = require "lunasip"
local tls = lunasip.tls
local C = require("lunasip.ffi").C

pcall(ffi.cdef, [[
struct tls_ctx;
int config_load(const char *dir, const char *file, void *out, char *err, size_t errlen);
void config_free(void *c);
int tls_ctx_new(const void *cfg, struct tls_ctx **out, char *err, size_t errlen);
void tls_ctx_unref(struct tls_ctx *c);
void lapi_set_tls_ctx(struct tls_ctx *ctx);
]])

local data = assert(package.searchpath("lunasip", package.path)):match("^(.*)/lua/lunasip%.lua$") .. "/t/data/tls/"

local function pem(name)
  local f = assert(io.open(data .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- f must fail with an error raised at f's own line (the caller's level) containing text.
local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error containing '" .. text .. "'")
  err = tostring(err)
  local line = debug.getinfo(f, "S").linedefined
  assert.matches("tls_spec%.lua:" .. line .. ": ", err)
  assert.truthy(err:find(text, 1, true), "error '" .. err .. "' lacks '" .. text .. "'")
end

describe("lunasip.tls", function()
  it("is what require 'lunasip' exposes", function()
    assert.equal(require "lunasip.tls", tls)
    assert.is_function(tls.validate)
    assert.is_function(tls.sip_identities)
  end)

  describe("validate", function()
    it("refuses what is not a list of strings", function()
      raises("pems must be a list of PEM strings", function() tls.validate() end)
      raises("pems must be a list of PEM strings", function() tls.validate(pem("ca.crt")) end)
      raises("pems[2] must be a string, got number", function() tls.validate({ pem("ca.crt"), 42 }) end)
    end)

    it("answers false, err for an empty or too long chain", function()
      assert.same({ false, "no certificate" }, { tls.validate({}) })
      local long = {}
      for i = 1, 17 do long[i] = pem("client.crt") end
      local ok, err = tls.validate(long)
      assert.is_false(ok)
      assert.matches("chain too long", err)
    end)

    it("without a TLS context trusts nothing", function()
      local ok, err = tls.validate({ pem("client.crt"), pem("ca.crt") })
      assert.is_false(ok)
      assert.matches("not trusted", err)
    end)

    describe("with the trust of lunasip.conf (tls.ca_file = ca.crt)", function()
      local cfg, dir
      setup(function()
        dir = os.tmpname()
        os.remove(dir)
        os.execute("mkdir -p " .. dir)
        local f = assert(io.open(dir .. "/lunasip.conf", "w"))
        f:write(([[
          sip = { listen = { "udp:127.0.0.1:5060" } }
          tls = { certificate = "%sserver.crt", private_key = "%sserver.key", ca_file = "%sca.crt" }
        ]]):format(data, data, data))
        f:close()
        cfg = ffi.new("char[?]", 65536) -- room for struct config (a few hundred bytes)
        local err = ffi.new("char[512]")
        assert(C.config_load(dir, dir .. "/lunasip.conf", cfg, err, 512) == 0, ffi.string(err))
        local ctx = ffi.new("struct tls_ctx *[1]")
        assert(C.tls_ctx_new(cfg, ctx, err, 512) == 0, ffi.string(err))
        C.lapi_set_tls_ctx(ctx[0]) -- takes its own reference
        C.tls_ctx_unref(ctx[0])
      end)
      teardown(function()
        C.lapi_set_tls_ctx(nil)
        C.config_free(cfg)
        os.remove(dir .. "/lunasip.conf")
        os.remove(dir)
      end)

      it("is true for a chain the CA signed, leaf first (with or without the CA itself)", function()
        assert.same({ true }, { tls.validate({ pem("client.crt") }) })
        assert.same({ true }, { tls.validate({ pem("client.crt"), pem("ca.crt") }) })
        assert.same({ true }, { tls.validate({ pem("sip_uri.crt") }) })
      end)

      it("is false, err for an expired, self-signed or foreign certificate", function()
        local ok, err = tls.validate({ pem("expired.crt") })
        assert.is_false(ok)
        assert.matches("expired", err)
        ok, err = tls.validate({ pem("self_signed.crt") })
        assert.is_false(ok)
        assert.matches("not trusted", err)
        ok, err = tls.validate({ pem("other_ca.crt") })
        assert.is_false(ok)
        assert.matches("not trusted", err)
      end)

      it("names the certificate that does not parse", function()
        local ok, err = tls.validate({ pem("client.crt"), "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n" })
        assert.is_false(ok)
        assert.matches("cannot parse certificate 2", err)
        ok, err = tls.validate({ "" })
        assert.is_false(ok)
        assert.matches("cannot parse certificate 1", err)
      end)
    end)
  end)

  describe("sip_identities (RFC 5922 §7.1)", function()
    it("refuses a non-string", function()
      raises("pem must be a string, got nil", function() tls.sip_identities() end)
      raises("pem must be a string, got table", function() tls.sip_identities({ pem("ca.crt") }) end)
    end)

    it("gives the hosts of sip: URIs when there are some (not sips:, https:, DNS)", function()
      assert.same({ "example.com" }, tls.sip_identities(pem("sip_uri.crt")))
    end)

    it("falls back to the DNS names, then to the CN", function()
      assert.same({ "dns.example.org", "*.example.org" }, tls.sip_identities(pem("dns_only.crt")))
      assert.same({ "cn.example.net" }, tls.sip_identities(pem("cn_only.crt")))
    end)

    it("answers nil, err for what does not parse", function()
      assert.same({ nil, "cannot parse certificate" }, { tls.sip_identities("") })
      assert.same({ nil, "cannot parse certificate" }, { tls.sip_identities("garbage") })
    end)
  end)
end)

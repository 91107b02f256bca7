#!/bin/sh
# Installs the Debian packages a target needs, only those missing; silent when none is.
# Usage: scripts/deps.sh run|test|bench
set -e
build="gcc make pkg-config libluajit2-5.1-dev libev-dev libmbedtls-dev librabbitmq-dev"
case "$1" in
  run)   want="$build" ;;
  # luajit2: the OpenResty LuaJIT interpreter busted runs on (--lua=luajit);
  # python3: the integration test driver (standard library only); sip-tester: SIPp.
  # rabbitmq-server: the broker the rabbitmq: sink tests publish to (started by the tests).
  # kamailio: the registrar behind lunasip in the WebRTC tests; openssl: their certificates.
  # Node.js and npm run the JsSIP client (t/node): Debian's, unless a node is already there.
  test)  want="$build luajit2 lua-busted python3 sip-tester rabbitmq-server kamailio openssl"
         command -v node >/dev/null 2>&1 || want="$want nodejs npm" ;;
  # kamailio: the comparison peer, kamailio-lua-modules its app_lua (the call-flow bench);
  # libosip2-dev: the parser we measure against.
  bench) want="$build luajit2 python3 sip-tester rabbitmq-server kamailio kamailio-lua-modules libosip2-dev" ;;
  *) echo "usage: $0 run|test|bench" >&2; exit 2 ;;
esac
missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "lunasip: missing Debian packages:$missing (run as root, or install them)" >&2
  exit 1
fi
echo "lunasip: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# Services must not start from the package scripts: tests and benchmarks start their own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq >/dev/null
apt-get install -y -qq $missing >/dev/null

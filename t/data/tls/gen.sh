#!/bin/sh
# Regenerates the test certificates of t/unit/test_tls.c (see README). Run once from this
# directory; the outputs are committed, so the tests never need the openssl CLI.
set -eu
DAYS=36500
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
# sign NAME SUBJECT EXTENSIONS: NAME.crt from NAME.key, signed by the test CA
sign() {
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
    -days $DAYS -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

# The CA (and a second, unrelated CA for "not trusted").
for ca in ca other_ca; do
  ec $ca.key
  openssl req -x509 -new -key $ca.key -subj "/O=lunasip test/CN=lunasip test $ca" -days $DAYS -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out $ca.crt
done

# The default server certificate: RSA 2048, so both key types are exercised.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server.key 2>/dev/null
sign server "/CN=server.test" "basicConstraints=CA:FALSE
subjectAltName=DNS:server.test,DNS:localhost,IP:127.0.0.1"

ec client.key
sign client "/CN=client.test" "basicConstraints=CA:FALSE
extendedKeyUsage=clientAuth,serverAuth
subjectAltName=DNS:client.test"

# SIP URIs next to DNS names: RFC 5922 §7.1 takes the host of sip:example.com only
# (sip:alice@... has a user part, https: and sips: are other schemes).
ec sip_uri.key
sign sip_uri "/CN=sip.example.com" "basicConstraints=CA:FALSE
subjectAltName=URI:sip:example.com,URI:sip:alice@example.net,URI:sips:secure.example.com,URI:https://www.example.com/,DNS:sip.example.com,DNS:www.example.com"

ec dns_only.key
sign dns_only "/CN=dns.example.org" "basicConstraints=CA:FALSE
subjectAltName=DNS:dns.example.org,DNS:*.example.org"

ec cn_only.key
sign cn_only "/CN=cn.example.net" "basicConstraints=CA:FALSE"

ec self_signed.key
openssl req -x509 -new -key self_signed.key -subj "/CN=self.test" -days $DAYS -sha256 \
  -addext "subjectAltName=DNS:self.test" -out self_signed.crt

# Expired: valid 2020-01-01 .. 2021-01-01, signed by the CA (openssl ca sets past dates).
ec expired.key
tmp=$(mktemp -d)
touch "$tmp/index.txt"
cat > "$tmp/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
[ext]
basicConstraints = CA:FALSE
subjectAltName = DNS:expired.test
CNF
echo 01 > "$tmp/serial"
openssl req -new -key expired.key -subj "/CN=expired.test" -out "$tmp/expired.csr"
openssl ca -batch -config "$tmp/ca.cnf" -cert ca.crt -keyfile ca.key -in "$tmp/expired.csr" \
  -startdate 20200101000000Z -enddate 20210101000000Z -extensions ext -notext -out expired.crt 2>/dev/null
rm -rf "$tmp"
rm -f ca.srl other_ca.srl

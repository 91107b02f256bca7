#!/bin/sh
# make run: lunasip in the foreground with the shipped conf/ (loopback listeners).
# Stop it with Ctrl-C (SIGINT: graceful shutdown). Reload: kill -HUP <pid>.
cd "$(dirname "$0")/.." || exit 1
echo "lunasip: starting with conf/ (Ctrl-C stops it; kill -HUP $$ reloads conf/server.lua)"
exec "${1:-./lunasip}" -c conf --foreground

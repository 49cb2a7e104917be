#!/bin/sh
# Probe of this pod's containers: `probe.sh redis` passes when redis answers PING with
# PONG, `probe.sh sentinel` when the sentinel confirms that enough sentinels are reachable
# to agree on and authorize a failover (SENTINEL CKQUORUM). Exit 0 healthy, 1 with the
# reason on stderr.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

case ${1:-} in
  redis)
    expected=PONG
    reply=$(redis_cli "$my_host" PING 2>&1) || true
    ;;
  sentinel)
    # "OK 3 usable Sentinels. Quorum and failover authorization can be reached"
    expected=OK
    reply=$(sentinel_cli "$my_host" SENTINEL CKQUORUM "$REDIS_MASTER_NAME" 2>&1) || true
    ;;
  *)
    log "usage: probe.sh redis|sentinel"
    exit 2
    ;;
esac

case $reply in
  "$expected" | "$expected "*) exit 0 ;;
esac
die "$1 is unhealthy: ${reply:-no answer}"

#!/bin/sh
# tr7-collector pre-remove: stop the service on removal (not on upgrade: deb passes "upgrade",
# rpm passes 1 when another version stays installed).
set -e
case "$1" in
    upgrade|1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl disable --now tr7-collector-prune.timer tr7-collector.service >/dev/null 2>&1 || true
fi
exit 0

#!/bin/sh
# tr7-agent post-remove: keys, spool and config survive removal; only a purge deletes them.
set -e
if [ "$1" = "purge" ]; then
    rm -rf /var/lib/tr7-agent /etc/tr7-agent
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0

#!/bin/sh
# tr7-collector post-remove: the configuration survives removal and a purge deletes it; the data
# directory never goes with the package: it holds the signing key, which no replacement can stand
# in for (no bundle of a past month verifies without it), and the billing evidence.
set -e
if [ "$1" = "purge" ]; then
    rm -rf /etc/tr7-collector
    if [ -d /var/lib/tr7-collector ]; then
        echo "tr7-collector: /var/lib/tr7-collector (key and evidence) is kept; delete it yourself" \
             "once it is backed up (tr7-collector backup) or no longer needed" >&2
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0

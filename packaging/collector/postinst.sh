#!/bin/sh
# tr7-collector post-install: create the system user and reload systemd; on upgrade restart a
# running collector (its data directory, key and database are kept); never start it unasked.
set -e
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/tr7-collector.conf || true
elif ! getent passwd tr7-collector >/dev/null; then
    useradd --system --home-dir /var/lib/tr7-collector --shell /usr/sbin/nologin tr7-collector || true
fi
chgrp tr7-collector /etc/tr7-collector/collector.env 2>/dev/null || true
# Builds before 2026-12-07 started the service on /var/lib/tr7-collector whatever
# collector.env said, while shell commands read TR7_COLLECTOR_DATA_DIR from it (an `apply` made a
# second collector there). The unit now reads it too: restarted onto the other directory, the
# service would answer the agents' keys `kid.unknown` and they set those heartbeats aside.
default=/var/lib/tr7-collector
# read as systemd and the commands read it: blanks around the name, the `=` and the value (a CR
# of a file saved on Windows too), then one pair of matching quotes
dir=$(sed -n 's/^[[:space:]]*TR7_COLLECTOR_DATA_DIR[[:space:]]*=//p' /etc/tr7-collector/collector.env \
      2>/dev/null | tail -n 1 | tr -d '\r' | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
      -e 's/^"\(.*\)"$/\1/' -e "s/^'\\(.*\\)'\$/\\1/")
moved=""
if [ -n "$dir" ] && [ "${dir%/}" != "$default" ] && [ -e "$default/collector.key" ]; then
    moved=yes
    echo "tr7-collector: NOT restarted: /etc/tr7-collector/collector.env sets TR7_COLLECTOR_DATA_DIR=$dir," \
         "which the service now uses, but $default holds a collector (collector.key), the one earlier" \
         "releases served. Keep the one your agents are enrolled with ('tr7-collector agent list" \
         "--data-dir DIR'): comment the line out to stay on $default, or move $default/collector.key" \
         "aside once $dir is the one; then: systemctl restart tr7-collector" >&2
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    [ -n "$moved" ] || systemctl try-restart tr7-collector.service || true
fi
echo "tr7-collector: settings in /etc/tr7-collector/collector.env; then: systemctl enable --now tr7-collector" >&2
exit 0

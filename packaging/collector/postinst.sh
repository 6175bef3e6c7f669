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
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    systemctl try-restart tr7-collector.service || true
fi
echo "tr7-collector: settings in /etc/tr7-collector/collector.env; then: systemctl enable --now tr7-collector" >&2
exit 0

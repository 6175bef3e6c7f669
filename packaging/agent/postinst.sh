#!/bin/sh
# tr7-agent post-install: create the system user, reload systemd; start or restart the agent
# only when its configuration is valid (a fresh install ships a commented sample only).
set -e
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/tr7-agent.conf || true
elif ! getent passwd tr7-agent >/dev/null; then
    useradd --system --home-dir /var/lib/tr7-agent --shell /usr/sbin/nologin tr7-agent || true
fi
chgrp tr7-agent /etc/tr7-agent/agent.toml 2>/dev/null || true
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if /usr/bin/tr7-agent config validate --config /etc/tr7-agent/agent.toml >/dev/null 2>&1; then
        # Upgrade of a configured agent: restart it on the new code (key and spool are kept).
        systemctl try-restart tr7-agent.service || true
    else
        echo "tr7-agent: edit /etc/tr7-agent/agent.toml, then: systemctl enable --now tr7-agent" >&2
    fi
fi
exit 0

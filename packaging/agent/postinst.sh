#!/bin/sh
# tr7-agent post-install: create the system user, reload systemd; start or restart the agent
# only when its configuration is valid (a fresh install ships a commented sample only).
set -e
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/tr7-agent.conf || true
elif ! getent passwd tr7-agent >/dev/null; then
    useradd --system --home-dir /var/lib/tr7-agent --shell /usr/sbin/nologin tr7-agent || true
fi
# The state directory exists before the service first starts: `tr7-agent enroll` as the service
# user writes the key there (the unit's StateDirectory= would make it only at the first start).
if getent passwd tr7-agent >/dev/null; then
    install -d -m 0700 -o tr7-agent -g tr7-agent /var/lib/tr7-agent
fi
chgrp tr7-agent /etc/tr7-agent/agent.toml 2>/dev/null || true
if [ ! -e /etc/tr7-agent/agent.toml ]; then
    echo "tr7-agent: configure it: install -m 0640 -g tr7-agent /usr/share/doc/tr7-agent/agent.toml.sample" \
         "/etc/tr7-agent/agent.toml, edit it, then: systemctl enable --now tr7-agent" >&2
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if problem=$(/usr/bin/tr7-agent config validate --config /etc/tr7-agent/agent.toml 2>&1 >/dev/null); then
        # Upgrade of a configured agent: restart it on the new code (key and spool are kept).
        [ -z "$problem" ] || echo "$problem" >&2  # warnings: values read this release's way
        systemctl try-restart tr7-agent.service || true
    elif [ -e /etc/tr7-agent/agent.toml ] && systemctl is-active --quiet tr7-agent.service; then
        # Said, not left to the next restart: `run` refuses it too (exit 2, not restarted), and an
        # agent that does not run signs no heartbeat: those hours are lost for good.
        echo "$problem" >&2
        echo "tr7-agent: NOT restarted: this release refuses /etc/tr7-agent/agent.toml (above); the" \
             "running agent keeps the previous version until it stops. Fix the file, check it with" \
             "'tr7-agent config validate --config /etc/tr7-agent/agent.toml', then:" \
             "systemctl restart tr7-agent" >&2
    fi
fi
exit 0

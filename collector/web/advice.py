"""What an MSP operator should do about each alert the overview lists (the alert says what happened)."""

ADVICE = {
    "fork": "Two different heartbeats share one sequence number, usually an agent host restored from a "
            "snapshot or its state directory copied: both copies are quarantined (not billed). Check the "
            "host; a copied state directory needs a new key there (tr7-agent enroll).",
    "break": "A heartbeat does not chain to the one before it and is quarantined (not billed): look for a "
             "replaced spool.db or a second host using this agent's key.",
    "clock_back": "The agent's clock went back: check time synchronisation (NTP) on its host. Nothing is "
                  "quarantined.",
    "silent_agent": "No heartbeat for three poll intervals: check the service on the agent's host "
                    "(systemctl status tr7-agent; tr7-agent status) and its path to the collector.",
    "fork_across_months": "As a fork, across the start of the month.",
    "break_across_months": "As a break, across the start of the month: the month's first heartbeat does "
                           "not chain to the last one of the month before.",
    "clock_back_across_months": "As clock_back, across the start of the month.",
    "clone": "One instance id ran on two VMs in the same hours: an appliance copied. Find the second VM "
             "(listed) and stop it, or give it its own instance id and license.",
    "pricing_error": "The catalog has no rate for this capacity: an open month cannot be invoiced, and "
                     "a closed month's late hours cannot be adjusted, until the rate is added and the "
                     "catalog applied again (tr7-collector apply).",
    "unlicensed": "The instance ran with no license: its hours are not billed. Add a license to the "
                  "catalog, or stop the instance.",
    "over_capacity": "The appliance declares more capacity than its fixed-term license: upgrade the "
                     "license or reduce the capacity.",
    "no_platform_license": "PAYG hours outside every platform license of yours: still billed; renew the "
                           "platform license with the vendor.",
    "account_overdue": "A payment failed: reminders go out every 3 days, and PAYG instances are "
                       "downgraded 15 days after the failure unless the payment is recorded.",
    "account_downgraded": "Unpaid past the grace period: the customer's PAYG instances are not entitled "
                          "and their hours are not billed until the payment is recorded (on the "
                          "customer's page).",
}

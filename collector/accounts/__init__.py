"""Customer accounts of billing-v1.md §8: overdue, reminders, downgrade, and entitlement."""

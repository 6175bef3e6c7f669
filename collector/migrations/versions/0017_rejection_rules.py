"""`rejections` counted by rule without array indexes: rows of one rule at different indexes merged.

Why: ingest counted `payload.observations[7].state` and `payload.observations[8].state` as two
rules, so anyone could add a row (and a /metrics series) per index with lines nobody signed.
Ingest now drops the indexes (collector/rejections.py rule_of); this merges the rows counted before:
lines summed, the latest time kept.
"""

import re
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0017_rejection_rules"
down_revision = "0016_rejections"
branch_labels = None
depends_on = None

_INDEX = re.compile(r"\[\d+\]")  # as collector.rejections.rule_of: a migration does not import the app
_T = sa.table("rejections", sa.column("provider", sa.String), sa.column("rule", sa.String),
              sa.column("lines", sa.BigInteger), sa.column("last_at", sa.BigInteger))


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_T.c.provider, _T.c.rule, _T.c.lines, _T.c.last_at)).all()
    merged: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    touched = False
    for r in rows:
        rule = _INDEX.sub("[]", r.rule)
        touched |= rule != r.rule
        m = merged[(r.provider, rule)]
        m[0] += int(r.lines)
        m[1] = max(m[1], int(r.last_at))
    if not touched:
        return
    conn.execute(_T.delete())
    conn.execute(_T.insert(), [{"provider": p, "rule": rule, "lines": n, "last_at": at}
                               for (p, rule), (n, at) in sorted(merged.items())])


def downgrade() -> None:
    pass  # the merged counts stay merged: the indexes are not kept anywhere

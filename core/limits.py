"""Bounds of the database's integer columns, kept here so layers above db/ can check ids.

Ids that come from outside (admin arguments, callback data) are checked against these
first: a bigger one can name no row, and sending it to the database is an error, not
"not found".
"""

from __future__ import annotations

# The largest value an Integer id column holds (PostgreSQL int4).
MAX_ROW_ID = 2**31 - 1
# The same for BigInteger columns (token counts).
MAX_BIGINT = 2**63 - 1

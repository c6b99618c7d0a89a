"""Insight for admins: what the team spends and how each gateway behaves (dashboard,
reconciliation, exports, key health, alerts and metrics). Figures are aggregated in the
database, never by reading every task into Python."""

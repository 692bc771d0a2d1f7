"""The governance of deletions: requests, batches, the audit trail and its report, lineage and
the promotion gate."""

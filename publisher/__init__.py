"""The consumer group that filters, converts and delivers user activity to CloudTrail Lake."""
